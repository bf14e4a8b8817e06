# Shortcuts for README's two commands, CI, and the relay benchmark (docs/performance.md).
.PHONY: run test ci bench
run:
	python3 dev.py run
test:
	python3 dev.py test
ci:
	bash .ci/run
bench:
	.venv/bin/pip install -q py-spy  # the server profile at the end of the run
	DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/1 \
	  .venv/bin/python bench/relay_bench.py --pin --limit --closed 50,200,1000,5000 --messages 20 \
	  --backlog 10000 --open 1000 --idle 5000 --group 100 --two-proc 1000 --repeat 3 \
	  --profile-server 1000 --json /tmp/perf.json
