"""The per-benchmark renderers that ``benchmarks/render_results.py`` calls.

``common`` holds the page types and helpers they share; ``programs`` the renderers of
benchmarks whose program renders its own table; ``tables`` the renderers whose table is
built here from the JSON.
"""
