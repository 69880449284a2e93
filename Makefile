.PHONY: setup run test quick bench
setup:
	scripts/setup.sh --lib
run:
	scripts/run.sh --runner=local
quick:
	scripts/run.sh --runner=local --quick
test:
	scripts/test.sh
bench:
	.venv/bin/python benchmarks/serving.py
