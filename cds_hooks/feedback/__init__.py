"""Feedback on cards: the models, the store (SQL, migrations), suppression of repeats, and the analytics report."""
