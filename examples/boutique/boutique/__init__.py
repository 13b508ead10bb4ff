"""Boutique: an online shop written as Archipel services (a from-scratch take on Online Boutique).

The app object lives in :mod:`boutique.app`; each service has its own module.
"""
