"""Helpers next to the DAG file, imported the ways TaskFlow users import them."""
