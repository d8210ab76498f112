"""The classifier-bias probe: which image attributes a class's DCT images shift against its baseline images.

docs/probe.md describes the attributes, the statistics and the ``probe`` table.
"""
