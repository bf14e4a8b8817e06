# Shortcuts for README's two commands.
.PHONY: run test ci
run:
	python3 dev.py run
test:
	python3 dev.py test
ci:
	bash .ci/run
