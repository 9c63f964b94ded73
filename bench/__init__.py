"""aiengine's benchmark suite: ``python -m bench`` (see ``bench/README.md``).

Benchmarks are not tests: nothing here is imported by the trial suite, and
no figure is asserted anywhere.
"""
