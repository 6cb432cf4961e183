# The two entry points of the README; everything else is a detail of these.
.PHONY: bootstrap up demo down status test lint bench

VENV := .venv/bin

bootstrap:
	./scripts/bootstrap.sh

up: bootstrap
	$(VENV)/clawql-secrets up
	$(VENV)/clawql-secrets status

demo: up
	$(VENV)/clawql-secrets demo

down:
	$(VENV)/clawql-secrets down

status:
	$(VENV)/clawql-secrets status

lint: bootstrap
	$(VENV)/ruff check clawql_secrets tests benchmarks
	$(VENV)/ruff format --check clawql_secrets tests benchmarks
	$(VENV)/mypy

test: lint
	$(VENV)/pytest

bench: bootstrap
	$(VENV)/python -m benchmarks.run
