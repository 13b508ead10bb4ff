# The two commands of the README.
.PHONY: shop test

shop:  ## run the reference shop as microservices on the embedded broker
	bash scripts/setup.sh
	python3 -m archipel run examples/boutique/boutique/app.py:app --mode microservices --broker embedded

test:  ## install what is needed, start the services, lint, type-check and run every test
	bash scripts/test.sh
