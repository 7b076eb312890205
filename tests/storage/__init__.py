"""Storage layer tests: one contract over every backend, plus backend specifics."""
