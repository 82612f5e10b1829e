# `make demo` and `make test` are the two commands a newcomer needs (see README).
.PHONY: install demo test lock

install:
	bash scripts/dev.sh install

demo:
	bash scripts/dev.sh demo

test:
	bash scripts/dev.sh test

# Re-pin requirements/constraints.txt from the current .venv after changing pyproject.toml.
lock:
	.venv/bin/python -m pip freeze --exclude-editable | grep -v '^flower-exp' > requirements/constraints.txt
