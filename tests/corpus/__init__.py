"""Malformed-input corpus: framework.py (cases, writer), <kind>_cases.py (the cases), make_*_corpus.py."""
