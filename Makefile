# halflife - see README.md. `make` builds build/halflife and build/libhalflife.a;
# `make test` runs every test; `make test SAN=1` runs them under
# AddressSanitizer and UBSan; `make tsan-check` runs the threaded tests under
# ThreadSanitizer (SAN=thread, build/tsan); `make bench` prints the benchmarks
# as JSON lines.

CC      ?= cc
SAN     ?= 0
ifeq ($(SAN),1)
BUILD   := build/san
SANFLAGS:= -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT     := -O1
else ifeq ($(SAN),thread)
BUILD   := build/tsan
SANFLAGS:= -fsanitize=thread -fno-omit-frame-pointer
OPT     := -O1
# librdkafka's C11 threads and locks, routed through pthreads so TSan sees
# them (tests/tsan_threads.c says why); linked into every SAN=thread program.
SAN_OBJ := build/tsan/tests/tsan_threads.o
else
BUILD   := build
SANFLAGS:=
OPT     := -O2
endif
SAN_OBJ ?=

PKGS     := rdkafka avro-c openblas libmicrohttpd libcurl jansson
WARN     := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unused-parameter
CFLAGS   += -std=c11 -D_GNU_SOURCE -g $(OPT) $(WARN) $(SANFLAGS) -MMD -MP \
            $(shell pkg-config --cflags openblas 2>/dev/null)
CORE_LIBS:= $(shell pkg-config --libs openblas 2>/dev/null || echo -lopenblas) -lm
ALL_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null || echo -lrdkafka -lavro -lopenblas -lmicrohttpd -lcurl -ljansson) -lpthread -lm
LDFLAGS  += $(SANFLAGS)

# core/: what the worker links; core/train/: offline fitting and evaluation;
# worker/: the running process; worker/cmd/: one file per subcommand.
CORE_SRC   := $(sort $(wildcard core/*.c))
TRAIN_SRC  := $(sort $(wildcard core/train/*.c))
WORKER_SRC := $(sort $(filter-out worker/main.c,$(wildcard worker/*.c)))
CMD_SRC    := $(sort $(wildcard worker/cmd/*.c))
TEST_SRC   := $(sort $(wildcard tests/test_*.c))
BENCH_SRC  := $(filter-out tests/bench/bench_faiss.c,$(sort $(wildcard tests/bench/bench_*.c)))
FUZZ_SRC   := $(sort $(wildcard tests/fuzz/fuzz_*.c))

CORE_OBJ   := $(CORE_SRC:%.c=$(BUILD)/%.o) $(TRAIN_SRC:%.c=$(BUILD)/%.o)
WORKER_OBJ := $(WORKER_SRC:%.c=$(BUILD)/%.o) $(CMD_SRC:%.c=$(BUILD)/%.o) $(BUILD)/version.o
INCLUDES   := -Icore -Icore/train -Iworker -Iworker/cmd
TESTS      := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
BENCHES    := $(BENCH_SRC:tests/bench/%.c=$(BUILD)/bench/%)
FUZZERS    := $(FUZZ_SRC:tests/fuzz/%.c=build/fuzz/%)

.PHONY: all test bench bench-build bench-faiss run deps check-layering check-clang check-prefetch fuzz clean
all: $(BUILD)/halflife $(BUILD)/libhalflife.a

# Order-only on deps: with make -j the compiler must not run before the
# headers are installed on a fresh machine.
$(BUILD)/%.o: %.c | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(INCLUDES) -c $< -o $@

# The version (`halflife --version`, halflife_build_info): git describe of
# the checkout, "unknown" outside one; make HL_VERSION=... sets it (the
# image's build, deploy/Dockerfile, has no checkout). version.c is
# rewritten only when the string changes, so a build of the same commit
# relinks nothing.
HL_VERSION := $(shell git describe --always 2>/dev/null || echo unknown)
.PHONY: FORCE
$(BUILD)/version.c: FORCE
	@mkdir -p $(BUILD)
	@printf '#include "version.h"\nconst char *hl_version(void) { return "%s"; }\n' '$(HL_VERSION)' >$@.tmp
	@cmp -s $@.tmp $@ && rm -f $@.tmp || mv $@.tmp $@

$(BUILD)/version.o: $(BUILD)/version.c | deps
	$(CC) $(CFLAGS) $(INCLUDES) -c $< -o $@

$(BUILD)/libhalflife.a: $(CORE_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libhlworker.a: $(WORKER_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/halflife: $(BUILD)/worker/main.o $(WORKER_OBJ) $(BUILD)/libhalflife.a $(SAN_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(ALL_LIBS)

# Test binaries link both libraries so worker/ parts (codec, config) are testable.
$(BUILD)/tests/%: tests/%.c $(BUILD)/libhlworker.a $(BUILD)/libhalflife.a tests/test.h $(SAN_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(INCLUDES) -Itests -o $@ $< $(BUILD)/libhlworker.a $(BUILD)/libhalflife.a $(SAN_OBJ) $(ALL_LIBS)

build/tsan/tests/tsan_threads.o: tests/tsan_threads.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/bench/%: tests/bench/%.c $(BUILD)/libhlworker.a $(BUILD)/libhalflife.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(INCLUDES) -Itests -o $@ $< $(BUILD)/libhlworker.a $(BUILD)/libhalflife.a $(ALL_LIBS)

# bench_faiss compares core/ivf.c with FAISS's IndexIVFFlat. Debian's
# libfaiss-dev has only a static C++ library (its C API's symbols are not
# in it), so a C++ shim (faiss_shim.cpp) wraps it. Built only where that
# library and a C++ compiler exist; nothing else links FAISS.
FAISS_LIB  ?= /usr/lib/x86_64-linux-gnu/libfaiss.a
HAVE_FAISS := $(if $(wildcard $(FAISS_LIB)),$(if $(shell command -v $(CXX) 2>/dev/null),1))
FAISS_SKIP := SKIP bench_faiss: needs $(FAISS_LIB) (Debian's libfaiss-dev) and a C++ compiler ($(CXX))
ifeq ($(HAVE_FAISS),1)
$(BUILD)/bench/faiss_shim.o: tests/bench/faiss_shim.cpp tests/bench/faiss_shim.h | deps
	@mkdir -p $(dir $@)
	$(CXX) -std=c++17 -g $(OPT) -Wall -Wextra -Werror -fopenmp $(SANFLAGS) -c $< -o $@

$(BUILD)/bench/bench_faiss: tests/bench/bench_faiss.c tests/bench/faiss_shim.h \
                            $(BUILD)/bench/faiss_shim.o $(BUILD)/libhalflife.a
	$(CC) $(CFLAGS) $(INCLUDES) -Itests -c $< -o $@.o
	$(CXX) $(LDFLAGS) -fopenmp -o $@ $@.o $(BUILD)/bench/faiss_shim.o $(BUILD)/libhalflife.a \
	  $(FAISS_LIB) $(CORE_LIBS)

bench-faiss: deps $(BUILD)/bench/bench_faiss
	@$(BUILD)/bench/bench_faiss
else
$(BUILD)/bench/bench_faiss:
	@echo "$(FAISS_SKIP)"

bench-faiss:
	@echo "$(FAISS_SKIP)"
endif

# libFuzzer targets: clang only; tests/integration/fuzz.sh runs each briefly.
# core/ and worker/ are compiled once with clang's coverage and sanitizers
# (fuzzer-no-link: no libFuzzer main in the objects) into one archive every
# target links: a new target costs one file's compile and a link, not a
# rebuild of every source.
FUZZ_BASE   := -std=c11 -D_GNU_SOURCE -g -O1 $(shell pkg-config --cflags avro-c 2>/dev/null)
FUZZ_CFLAGS := $(FUZZ_BASE) -fsanitize=fuzzer,address,undefined
FUZZ_LIB_CFLAGS := $(FUZZ_BASE) -fsanitize=fuzzer-no-link,address,undefined -MMD -MP
# Of core/train/ only the event-file readers (fuzz_dataset.c): the trainer's
# kernels are not input parsers.
FUZZ_OBJ := $(CORE_SRC:%.c=build/fuzz/obj/%.o) $(WORKER_SRC:%.c=build/fuzz/obj/%.o) build/fuzz/obj/version.o \
            build/fuzz/obj/core/train/dataset.o build/fuzz/obj/core/train/lines.o
build/fuzz/obj/%.o: %.c | deps
	@mkdir -p $(dir $@)
	clang $(FUZZ_LIB_CFLAGS) $(INCLUDES) -c $< -o $@

build/fuzz/obj/version.o: $(BUILD)/version.c | deps
	@mkdir -p $(dir $@)
	clang $(FUZZ_LIB_CFLAGS) $(INCLUDES) -c $< -o $@

build/fuzz/libhlfuzz.a: $(FUZZ_OBJ)
	@rm -f $@
	ar rcs $@ $^

build/fuzz/%: tests/fuzz/%.c build/fuzz/libhlfuzz.a | deps
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) $(INCLUDES) -o $@ $< build/fuzz/libhlfuzz.a $(ALL_LIBS)

fuzz: $(FUZZERS)

# The image's build context has no deploy/ (its build stage installs the
# packages itself), so a missing script means nothing to install.
deps:
	@if [ -f deploy/deps.sh ]; then deploy/deps.sh; fi

# core/ and core/train/: no Kafka, threads, sockets, HTTP or clock; core/ does
# not reach into core/train/ (serving never links the trainer's internals).
check-layering:
	@! grep -nE '#include *[<"](librdkafka/|pthread\.h|sys/socket\.h|microhttpd\.h|time\.h|sys/time\.h)' core/*.[ch] core/train/*.[ch] \
	  || { echo "core/ and core/train/ must not include Kafka, threads, sockets or the clock (STYLE.md section 1)"; exit 1; }
	@! grep -nE 'clock_gettime|gettimeofday|getenv' core/*.[ch] core/train/*.[ch] \
	  || { echo "core/ and core/train/ must not read the clock or the environment (STYLE.md section 1)"; exit 1; }
	@! grep -nE '#include *"(train|train_net|train_kernels|train_eval|dataset|synth)\.h"' core/*.[ch] \
	  || { echo "core/ must not include core/train/ (STYLE.md section 1)"; exit 1; }

# Warnings are errors with clang too: every source is parsed with clang and
# the same warning flags (-fsyntax-only: seconds, no objects to keep apart).
CLANG_SRC := $(CORE_SRC) $(TRAIN_SRC) $(WORKER_SRC) $(CMD_SRC) worker/main.c $(TEST_SRC) $(BENCH_SRC) \
             tests/bench/bench_faiss.c $(FUZZ_SRC)
check-clang: deps
	@if command -v clang >/dev/null; then \
	  for f in $(CLANG_SRC); do \
	    clang -std=c11 -D_GNU_SOURCE $(WARN) $(shell pkg-config --cflags openblas 2>/dev/null) \
	      $(INCLUDES) -Itests -fsyntax-only $$f || { echo "clang warnings in $$f"; exit 1; }; \
	  done; \
	else echo "SKIP check-clang: clang not installed"; fi

# Every object whose source prefetches must hold a prefetch instruction:
# gcc drops the calls of an out-of-line helper that only prefetches
# (core/hl.h, HL_PREFETCH_FN), and nothing else would notice.
check-prefetch: $(BUILD)/halflife
	@HL_CC="$(CC) $(filter-out -MMD -MP,$(CFLAGS)) $(INCLUDES)" tests/check_prefetch.sh $(BUILD)

FUZZ_WANTED := $(if $(shell command -v clang 2>/dev/null),$(FUZZERS))
test: deps check-layering check-clang check-prefetch $(BUILD)/halflife $(TESTS) $(BENCHES) $(FUZZ_WANTED)
	@HL_HALFLIFE=$(abspath $(BUILD)/halflife) HL_SAN=$(SAN) tests/run.sh $(abspath $(BUILD))

# The long runs that do not fit in make test's ten minutes: the demo at its
# default rate for ten minutes (test_live.py runs 75 s inside make test).
.PHONY: test-long
test-long: deps $(BUILD)/halflife $(BUILD)/tests/test_offline
	@HL_HALFLIFE=$(abspath $(BUILD)/halflife) HL_SAN=$(SAN) HL_BUILD=$(abspath $(BUILD)) \
	  HL_TOP=$(CURDIR) HL_LIVE_SECONDS=600 /usr/bin/python3 tests/integration/test_live.py
	@HL_HALFLIFE=$(abspath $(BUILD)/halflife) HL_SAN=$(SAN) HL_BUILD=$(abspath $(BUILD)) \
	  HL_TOP=$(CURDIR) HL_LIVE_SECONDS=600 HL_LONG=1 /usr/bin/python3 tests/integration/test_live_run.py
	@HL_HALFLIFE=$(abspath $(BUILD)/halflife) HL_SAN=$(SAN) HL_BUILD=$(abspath $(BUILD)) \
	  HL_TOP=$(CURDIR) HL_LONG=1 /usr/bin/python3 tests/integration/test_changelog.py
	@HL_HALFLIFE=$(abspath $(BUILD)/halflife) HL_SAN=$(SAN) HL_BUILD=$(abspath $(BUILD)) \
	  HL_TOP=$(CURDIR) HL_LONG=1 /usr/bin/python3 tests/integration/test_min_interval.py

bench: deps $(BUILD)/halflife $(BENCHES)
	@for b in $(BENCHES); do $$b || exit 1; done
	@$(MAKE) --no-print-directory bench-faiss

# Builds the benchmarks without running them (make bench runs them all,
# for many minutes): then run one, e.g. build/bench/bench_swap --help.
bench-build: deps $(BUILD)/halflife $(BENCHES)

# The tests that start threads, under ThreadSanitizer (README, Testing):
# builds build/tsan/ whatever SAN says, then tests/tsan_check.sh runs them.
TSAN_TESTS := test_log test_metrics test_persist test_registry test_schema_store \
              test_snapshot_write test_changelog test_changelog_reshape test_items_load test_swap \
              test_swap_chain test_models test_models_keep test_offline
.PHONY: tsan-check
tsan-check: deps
	@$(MAKE) --no-print-directory SAN=thread build/tsan/halflife $(TSAN_TESTS:%=build/tsan/tests/%)
	@tests/tsan_check.sh $(abspath build/tsan)

run: deps $(BUILD)/halflife
	$(BUILD)/halflife demo

# README.md's key list, between its keys:begin and keys:end lines, is
# generated from the key table (worker/config.c); test_config_docs.sh
# fails when it is stale.
.PHONY: readme-keys
readme-keys: $(BUILD)/halflife
	@grep -q '^<!-- keys:begin' README.md && grep -q '^<!-- keys:end' README.md
	@{ sed '/^<!-- keys:begin/q' README.md; echo; $(BUILD)/halflife run --help-markdown; echo; \
	   sed -n '/^<!-- keys:end/,$$p' README.md; } >README.md.tmp && mv README.md.tmp README.md

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)
