# The two commands of the README. Both run the idempotent bootstrap first.
.PHONY: run test bootstrap
bootstrap:
	@bash scripts/bootstrap.sh

# The main job: tune the quick suite on the default device (lavapipe without a GPU: ~2-5 min).
run: bootstrap
	.venv/bin/kgen tune --suite quick

# KGEN_VALIDATION=1: every Vulkan call runs under the Khronos validation layer and any error it
# reports fails the test that caused it (tests/conftest.py).
test: bootstrap
	KGEN_VALIDATION=1 .venv/bin/python -m pytest -q
