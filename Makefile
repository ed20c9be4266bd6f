# The two commands of the README. Both run the idempotent bootstrap first.
.PHONY: run test bootstrap
bootstrap:
	@bash scripts/bootstrap.sh

run: bootstrap
	.venv/bin/kgen devices
	.venv/bin/kgen generate

test: bootstrap
	.venv/bin/python -m pytest -q
