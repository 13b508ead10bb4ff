# The two commands of the README. scripts/setup.sh installs the Python packages into the project's
# virtual environment .venv (Debian 12's python3 refuses `pip install` outside one: PEP 668).
PY := .venv/bin/python

.PHONY: shop test

shop:  ## run the reference shop as microservices on the embedded broker
	bash scripts/setup.sh
	$(PY) -m archipel run examples/boutique/boutique/app.py:app --mode microservices --broker embedded

test:  ## install what is needed, start the services, lint, type-check and run every test
	bash scripts/test.sh
