# Thin wrapper over CMake. `make test` and `make demo` install the Debian packages first.
#   make               build (build/tunnel)
#   make test          install deps, build, run every test (ctest)
#   make test SANITIZE=1   the same with ASan + UBSan (in build-asan/)
#   make demo          a guided tour on this machine
#   make install       install tunnel and its Lua modules (PREFIX=/usr/local)
#   make lint          luacheck + clang-format check

SANITIZE ?= 0
PREFIX ?= /usr/local
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

ifeq ($(SANITIZE),1)
BUILD ?= build-asan
CMAKE_FLAGS += -DTUNNEL_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
export ASAN_OPTIONS ?= detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS ?= print_stacktrace=1:halt_on_error=1
export LSAN_OPTIONS ?= suppressions=$(CURDIR)/scripts/lsan.supp:print_suppressions=0
else
BUILD ?= build
endif

.PHONY: all build configure deps test demo install lint format clean

all: build

deps:
	@sh scripts/install-deps.sh

configure:
	@cmake -S . -B $(BUILD) -DCMAKE_INSTALL_PREFIX=$(PREFIX) $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

test: deps build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

demo: deps build
	@sh scripts/demo.sh $(BUILD)/tunnel

install: build
	cmake --install $(BUILD)

lint:
	luacheck --no-color -q lua spec examples scripts
	clang-format --dry-run -Werror $$(git ls-files 'src/*.c' 'src/*.h' 'spec/c/*.c' 'spec/c/*.h' 'fuzz/*.c')

format:
	clang-format -i $$(git ls-files 'src/*.c' 'src/*.h' 'spec/c/*.c' 'spec/c/*.h' 'fuzz/*.c')

clean:
	rm -rf build build-asan build.luarocks
