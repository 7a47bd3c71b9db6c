# backupmx — the two commands: `make run` and `make test`. Both install what is missing first.
BUILD ?= build
JOBS ?= $(shell nproc)
CONFIG ?= examples/demo.toml

.PHONY: all deps build run test unit fuzz bench clean format fleet-demo release-compile

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD)/build.ninja: CMakeLists.txt
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD) -j $(JOBS)

# A self-signed certificate for the demo's STARTTLS, made once under var/tls/.
TLS_DIR ?= var/tls
$(TLS_DIR)/cert.pem:
	mkdir -p $(TLS_DIR)
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
	  -subj "/CN=mx2.demo.test" -addext "subjectAltName=DNS:mx2.demo.test" \
	  -keyout $(TLS_DIR)/key.pem -out $(TLS_DIR)/cert.pem 2>/dev/null
	chmod 600 $(TLS_DIR)/key.pem

# Starts backupmx in the foreground on the demo config (SMTP on 127.0.0.1:2525, SQLite under var/).
# The first run creates the operator account `admin` and prints its one-time password (for the
# panel on http://127.0.0.1:8025); later runs keep it.
run: build $(TLS_DIR)/cert.pem
	./$(BUILD)/backupmx check-config --config $(CONFIG)
	@./$(BUILD)/backupmx admin add-user admin --role operator --config $(CONFIG) 2>/dev/null \
	  && echo "web panel: http://127.0.0.1:8025/ (user admin, the password above)" \
	  || echo "web panel: http://127.0.0.1:8025/ (user admin; password printed by the first make run)"
	exec ./$(BUILD)/backupmx serve --config $(CONFIG)

# Another standard build type, compiled (not tested) so that every one keeps building: Release
# (-O3) warns (-Werror) where RelWithDebInfo does not. Debug and MinSizeRel build too.
RELEASE_BUILD ?= build-release
release-compile: deps
	cmake -S . -B $(RELEASE_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
	ninja -C $(RELEASE_BUILD) -j $(JOBS) backupmx

# Every test: unit (plain and ASan/UBSan) and end-to-end with real peers. ctest prints the summary.
test: build release-compile
	cd $(BUILD) && ctest --output-on-failure --timeout 900 -j 2

# The parsers' libFuzzer targets, longer than in `make test` (FUZZ_SECONDS each).
FUZZ_SECONDS ?= 600
fuzz: build
	for t in command address data reply; do \
	  ./$(BUILD)/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 $(BUILD)/fuzz-corpus/$$t \
	    tests/fuzz/corpus/$$t || exit 1; done

# backupmx beside Postfix on this machine; results in bench/RESULTS.md (see bench/run.py).
bench: build
	python3 bench/run.py --write
	python3 bench/backlog.py --write
	python3 bench/fleet.py --write

# Two PostgreSQL clusters (primary + synchronous standby) and three nodes on loopback; see
# docs/fleet.md. Ctrl-C stops it all.
fleet-demo: build
	python3 scripts/fleet_demo.py

unit: build
	./$(BUILD)/unit_tests

format:
	clang-format -i $$(git ls-files 'src/*.cpp' 'src/*.hpp' 'tests/*.cpp' 'tests/*.hpp' 'bench/*.cpp')

clean:
	rm -rf $(BUILD) $(RELEASE_BUILD)
