"""The dashboard's parts: figures and tables drawn from run records, the form, the background job runner.

Nothing here computes masks or scores; everything reads what engine.run returns (see engine/io/record.py).
"""
