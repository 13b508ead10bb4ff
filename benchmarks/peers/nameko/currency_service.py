"""The Nameko peer of benchmarks/remote_hop.py: ``nameko run currency_service --broker URL``."""

from nameko.rpc import rpc

RATES = {"EUR": 1, "USD": 2}


class Currency:
    name = "currency"

    @rpc
    def convert(self, amount: dict, to: str) -> dict:
        units = amount["units"] * RATES[to] // RATES[amount["currency"]]
        return {"currency": to, "units": units, "nanos": amount["nanos"]}
