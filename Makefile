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
	# the compiled load drivers (relay_bench builds them; without Go it falls back to Python's)
	test -d /usr/share/gocode/src/github.com/gorilla/websocket && command -v go >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq golang-go golang-github-gorilla-websocket-dev)
	DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/1 \
	  .venv/bin/python bench/relay_bench.py --pin --limit --closed 50,200,1000,5000 --messages 20 \
	  --backlog 10000 --open 1000 --idle 5000 --group 100 --two-proc 1000 --repeat 3 \
	  --profile-server 1000 --json /tmp/perf.json
