# The two commands of the README. Both run the idempotent bootstrap first.
.PHONY: run test bootstrap
bootstrap:
	@bash scripts/bootstrap.sh

run: bootstrap
	.venv/bin/kgen devices
	.venv/bin/kgen generate

# KGEN_VALIDATION=1: every Vulkan call runs under the Khronos validation layer and any error it
# reports fails the test that caused it (tests/conftest.py).
test: bootstrap
	KGEN_VALIDATION=1 .venv/bin/python -m pytest -q
