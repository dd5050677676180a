PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-big bench lint mutation fuzz clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

test-big: $(STAMP)
	QCLI_BIG_TESTS=1 $(BIN)/python -m pytest tests/io/test_big_model.py

lint: $(STAMP)
	$(BIN)/ruff check qcli tests bench sample_models
	$(BIN)/ruff format --check qcli tests

demo: $(STAMP)
	@mkdir -p demo_out
	$(BIN)/qcli quantize sample_models/cnn/model.onnx --calib sample_models/cnn/images/calib --recipe sample_models/cnn/recipe.toml -o demo_out/cnn.int8.onnx
	$(BIN)/qcli compare sample_models/cnn/model.onnx demo_out/cnn.int8.onnx --data sample_models/cnn/images/eval --recipe sample_models/cnn/recipe.toml --min-sqnr 20 --max-accuracy-drop 1
	$(BIN)/qcli quantize sample_models/attention/model.onnx --scheme w4a16 --eval sample_models/attention/eval -o demo_out/attention.int4.onnx

bench: $(STAMP)
	$(BIN)/pip install --quiet -r bench/requirements.txt
	$(BIN)/python bench/run_bench.py
	$(BIN)/python bench/weight_only_bench.py
	$(BIN)/python bench/recipe_bench.py
	$(BIN)/python bench/silero_bench.py
	$(BIN)/python bench/memory_bench.py --models small,big --json bench/memory_results.json | tee bench/memory_results.md

# Property-based tests run long: seed after seed from tests/fuzz_seeds.txt, 8,000 examples a test, for 10 minutes
# (a seed cut short by the clock is not a failure; any failing example is, with its seed).
fuzz: $(STAMP)
	@end=$$(( $$(date +%s) + 600 )); for seed in $$(grep -v "^#" tests/fuzz_seeds.txt); do \
		left=$$(( end - $$(date +%s) )); [ $$left -le 0 ] && break; \
		echo "fuzz: seed $$seed ($$left s left)"; \
		QCLI_FUZZ_EXAMPLES=8000 timeout $$left $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz.py \
			--hypothesis-seed=$$seed; rc=$$?; \
		[ $$rc -eq 124 ] && break; [ $$rc -ne 0 ] && { echo "fuzz: seed $$seed failed"; exit $$rc; }; \
	done; echo "fuzz: 10 minutes clean"

# Mutation testing (mutmut 3) in a throwaway clone of HEAD: slow (an hour or more on 2 cores), not part of CI.
mutation: $(STAMP)
	rm -rf .mutation && git clone -q . .mutation
	cd .mutation && $(PY) -m venv .venv && .venv/bin/pip install -q -e '.[dev]' 'mutmut==3.8.1'
	cd .mutation && .venv/bin/mutmut run --max-children 2; .venv/bin/mutmut results

clean:
	rm -rf $(VENV) demo_out bench/.cache .mutation
