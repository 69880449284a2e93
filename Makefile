.PHONY: setup run quick lint test test-fast bench bench-smoke
setup:
	scripts/setup.sh --lib
run:
	scripts/run.sh --runner=local
quick:
	scripts/run.sh --runner=local --quick
lint: setup
	.venv/bin/ruff check .
test:
	scripts/test.sh
test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow" tests
bench: setup
	.venv/bin/python benchmarks/accuracy.py --budget cpu
bench-smoke: setup
	.venv/bin/python benchmarks/accuracy.py --budget smoke
