# The few verbs people type. `make demo` and `make test` set everything up first.
VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench benchmark calibrate clean bench-distributed calibrate-comm pretrain bench-quality

setup: $(STAMP)

# The venv is rebuilt when the pinned dependencies change.
$(STAMP): pyproject.toml requirements-torchrec.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-torchrec.txt
	touch $(STAMP)

demo: setup
	$(VENV)/bin/dreamshard demo

test: setup
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: setup
	$(PYTHON) benchmarks/bench_foundation.py

# The paper-style benchmark on the simulator (about 20-30 minutes on 2 cores).
benchmark: setup
	$(VENV)/bin/dreamshard benchmark --out runs/benchmark

calibrate: setup
	$(VENV)/bin/dreamshard calibrate --out src/dreamshard/profiles/cpu-zen4.json --report benchmarks/results/cpu-zen4-calibration.json

# The packaged pretrained model of the CPU profile, in five stages (about 30 + 29 + 28
# + 63 + 21 minutes on 2 cores): augmented tasks, then twice 15 iterations with DLRM-like
# tasks added, then a dense warm-up of 600 tasks (near-optimal placements from a search
# on the simulator's cost among them) and 5 iterations, then a warm-up of 300 tasks and
# 2 long iterations with each device's error taken over its own cost. Each stage's
# provenance.json records the one it started from.
PRETRAIN_DIR = runs/pretrain/cpu-zen4
pretrain: setup
	$(VENV)/bin/dreamshard pretrain --profile cpu-zen4 --out $(PRETRAIN_DIR)-stage1
	$(VENV)/bin/dreamshard pretrain --profile cpu-zen4 --init $(PRETRAIN_DIR)-stage1 \
		--dlrm-tasks 300 --iterations 15 --train-seed 2027 --out $(PRETRAIN_DIR)-stage2
	$(VENV)/bin/dreamshard pretrain --profile cpu-zen4 --init $(PRETRAIN_DIR)-stage2 \
		--dlrm-tasks 300 --iterations 15 --train-seed 2028 --out $(PRETRAIN_DIR)-stage3
	$(VENV)/bin/dreamshard pretrain --profile cpu-zen4 --init $(PRETRAIN_DIR)-stage3 \
		--dlrm-tasks 300 --warmup-tasks 600 --iterations 5 --cost-steps 1000 \
		--train-seed 2031 --out $(PRETRAIN_DIR)-stage4
	$(VENV)/bin/dreamshard pretrain --profile cpu-zen4 --init $(PRETRAIN_DIR)-stage4 \
		--dlrm-tasks 300 --warmup-tasks 300 --iterations 2 --cost-steps 5000 \
		--device-error device --train-seed 2032 --out $(PRETRAIN_DIR)-stage5
	mkdir -p src/dreamshard/models/cpu-zen4
	cp $(PRETRAIN_DIR)-stage5/model.pt $(PRETRAIN_DIR)-stage5/config.json \
		$(PRETRAIN_DIR)-stage5/history.json $(PRETRAIN_DIR)-stage5/provenance.json \
		src/dreamshard/models/cpu-zen4/

# Every placer against the ORACLE on the simulator, cost-model ranking, planning times.
bench-quality: setup
	$(PYTHON) benchmarks/bench_quality.py --out benchmarks/results/quality.json

bench-distributed: setup
	$(PYTHON) benchmarks/bench_distributed.py

# The all-to-all model of the packaged CPU profile, fitted to 2 gloo processes.
calibrate-comm: setup
	$(VENV)/bin/dreamshard calibrate-comm --devices 2 --profile cpu-zen4 --out src/dreamshard/profiles/cpu-zen4.json --report benchmarks/results/cpu-zen4-comm.json --windows 6

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache runs
