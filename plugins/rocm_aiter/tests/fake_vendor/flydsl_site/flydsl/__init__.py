"""Test double of the ``flydsl`` package: present, and nothing else (aiter asks only that
it can be imported)."""
