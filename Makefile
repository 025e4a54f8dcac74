# Two commands do all set-up on a fresh machine: `make train` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PROTO   := pipeline/proto/caffe.proto pipeline/proto/schedule.proto
# torch 2.13.0 is the local CPU build; any other spec would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

# `make train` alone runs the teacher-student story; SOLVER=... trains that solver instead.
SOLVER  ?=
WEIGHTS ?=
WEIGHTS_MAP ?=
SET     ?=
ITERS   ?= 50
MODEL   ?=

.PHONY: setup proto test lint format train data clean plot time convert sweep figures ops test-portable

setup: $(STAMP)

$(STAMP): pyproject.toml
	@# graphviz draws nets (tools/draw_net.py), chromium checks the run report in a real browser; best effort:
	@# the tests that need them skip without them.
	@# libopenblas0-pthread: the OpenBLAS that BVLC Caffe ran on, for the bit-exact `--caffe-blas` mode.
	@(command -v dot >/dev/null && command -v chromium >/dev/null && \
		[ -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 ]) || (command -v apt-get >/dev/null && \
		[ "$$(id -u)" = 0 ] && (apt-get update -qq && \
		apt-get install -y -qq graphviz chromium libopenblas0-pthread >/dev/null) ) || true
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q --no-build-isolation -e ".[dev]"
	@# The C++ ops (pipeline/csrc), built now, not at first use; best effort: without a compiler the code falls
	@# back (or names the problem where the op is needed). Cached per sources, flags, compiler and CPU.
	$(PY) -m pipeline.ops.build || echo "the C++ ops were not built (see above); the code falls back where it can"
	touch $(STAMP)

# Builds the C++ op libraries that are not built yet (make setup does this once; sources changed since are
# rebuilt here or at first use).
ops: $(STAMP)
	$(PY) -m pipeline.ops.build

# The generated protobuf modules are committed; this regenerates them after editing a schema (caffe.proto,
# Caffe's; schedule.proto, the transfer tools' schedules and state files). protoc writes schedule_pb2's import
# of caffe.proto as a top-level `import caffe_pb2`: made the package's `from pipeline.proto import caffe_pb2`.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Ipipeline/proto --python_out=pipeline/proto $(PROTO)
	sed -i 's/^import caffe_pb2 as caffe__pb2$$/from pipeline.proto import caffe_pb2 as caffe__pb2/' \
		pipeline/proto/schedule_pb2.py

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline tests tools bench
	$(VENV)/bin/ruff format --check pipeline tests tools bench

format: $(STAMP)
	$(VENV)/bin/ruff format pipeline tests tools bench
	$(VENV)/bin/ruff check --fix pipeline tests tools bench

test: $(STAMP) lint
	$(VENV)/bin/pytest -q -n 2 tests

# The suite again under other kernels than this machine picks (torch's oneDNN, MKL and ATen held to older
# instruction sets; one thread), a proxy for another CPU: no test may depend on which kernels a CPU gets. Not
# part of `make test` (about 5 minutes per configuration). The bit-exact mode's tests pin their own arithmetic
# (OpenBLAS's Haswell kernels, 2 threads) and pass under each configuration as they are.
PORTABLE ?= "ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2" \
	"OMP_NUM_THREADS=1 ONEDNN_MAX_CPU_ISA=AVX MKL_ENABLE_INSTRUCTIONS=AVX"
test-portable: $(STAMP)
	@status=0; for config in $(PORTABLE); do echo "== $$config"; \
		env $$config $(VENV)/bin/pytest -q -n 2 tests || status=1; done; exit $$status

TO      ?= onnx
OUT     ?=
DATA    ?=
# make convert MODEL=deploy.prototxt WEIGHTS=x.caffemodel TO=onnx|safetensors|pt|pt2|caffemodel|h5 [OUT=path] [DATA=train_test.prototxt]
# (writes x.<format> in the current folder unless OUT says where; never over an input; pt = torch.save state dict)
convert: $(STAMP)
	$(PY) -m pipeline convert --model $(MODEL) --weights $(WEIGHTS) --to $(TO) $(if $(OUT),--out $(OUT)) $(if $(DATA),--data-prototxt $(DATA))

# The story's settings, each optional: make train HIDDEN=64 TEMPERATURE=2 ALPHA=0.5 ITERS=300 (or TEACHER_ITERS=,
# STUDENT_ITERS=) TEACHER_WEIGHTS=runs/story/teacher/lenet_iter_1000.caffemodel OUT=runs/story2 MNIST_DIR=...
HIDDEN  ?=
TEMPERATURE ?=
ALPHA   ?=
TEACHER_ITERS ?=
STUDENT_ITERS ?=
TEACHER_WEIGHTS ?=
STORY_FLAGS = $(if $(HIDDEN),--student-hidden $(HIDDEN)) $(if $(TEMPERATURE),--temperature $(TEMPERATURE)) \
	$(if $(ALPHA),--alpha $(ALPHA)) $(if $(filter command line environment,$(origin ITERS)),--iters $(ITERS)) \
	$(if $(TEACHER_ITERS),--teacher-iters $(TEACHER_ITERS)) $(if $(STUDENT_ITERS),--student-iters $(STUDENT_ITERS)) \
	$(if $(TEACHER_WEIGHTS),--teacher-weights '$(TEACHER_WEIGHTS)') $(if $(OUT),--run '$(OUT)') \
	$(if $(MNIST_DIR),--data-dir '$(MNIST_DIR)')

train: $(STAMP)
	@if [ -z "$(SOLVER)" ]; then $(PY) tools/teacher_student_story.py $(strip $(STORY_FLAGS)); else \
	  $(PY) tools/make_data.py && $(PY) -m pipeline train --solver $(SOLVER) $(if $(WEIGHTS),--weights $(WEIGHTS)) \
	  $(if $(WEIGHTS_MAP),--weights-map '$(WEIGHTS_MAP)') $(foreach s,$(SET),--set '$(s)'); fi

MNIST_DIR ?=
CIFAR_DIR ?=
data: $(STAMP)
	$(PY) tools/make_data.py $(if $(MNIST_DIR),--mnist $(MNIST_DIR)) $(if $(CIFAR_DIR),--cifar $(CIFAR_DIR))

GRID    ?=
JOBS    ?= 1
# make sweep GRID="temperature=1,2,4 alpha=0.5,0.9" [SOLVER=...] [SET="net=prototxt/teacher_student.prototxt"] [JOBS=2] [OUT=runs/sweep_kd]
sweep: $(STAMP)
	$(PY) tools/sweep.py --solver $(SOLVER) $(foreach g,$(GRID),--grid '$(g)') $(foreach s,$(SET),--set '$(s)') \
		--jobs $(JOBS) $(if $(OUT),--out $(OUT)) $(if $(WEIGHTS),--weights $(WEIGHTS))

figures: $(STAMP)
	sh docs/figures/reproduce.sh

LOG ?=
plot: $(STAMP)
	$(PY) tools/plot_training_log.py $(LOG) -o $(basename $(firstword $(LOG))).png -o $(basename $(firstword $(LOG))).svg

# make time MODEL=prototxt/lenet.prototxt [ITERS=50] [SET="batch=32"] (the zoo's nets read the data make data builds)
time: $(STAMP)
	$(PY) tools/make_data.py && $(PY) -m pipeline time --model $(MODEL) --iterations $(ITERS) $(foreach s,$(SET),--set '$(s)')

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
