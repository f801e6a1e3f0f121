# weft: see README.md. Every target that touches the kernel needs root.
GO      ?= go
PREFIX  ?= /usr/local
DESTDIR ?=
CNIBIN  ?= /opt/cni/bin
MANDIR      ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR  ?= $(PREFIX)/share/zsh/site-functions
export CGO_ENABLED ?= 0
export PATH := $(PATH):/usr/local/go/bin

BINARIES := bin/weftd bin/weftctl bin/weft bin/weft-lab

# Every binary reports this version (weftd --version, weftctl version):
# git describe of the tree built, "dev" without git or outside a clone.
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build docs test unit e2e bench demo install clean fmt vet version

all: build

build:
	@mkdir -p bin
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/ ./cmd/...
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/weft ./cni-plugin

# Shell completion and manual pages, generated from the binaries' own help:
# weftctl describes its command table; weftd's page lists the flags of
# weftd --help in dist/weftd.1.in. The binaries must run on this machine.
docs: build
	bin/weftctl completion bash > bin/weftctl.bash
	bin/weftctl completion zsh > bin/_weftctl
	bin/weftctl man > bin/weftctl.1
	bin/weftd --help > bin/weftd.help 2>&1
	$(GO) run ./dist/mkman -template dist/weftd.1.in -version $(VERSION) < bin/weftd.help > bin/weftd.1

# Every test, root-only ones included (they skip with a message when not root).
test: build
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	WEFT_E2E_BIN_DIR=$(CURDIR)/bin $(GO) test -count=1 -p 2 -timeout 30m ./...
	# The node core, the peer filter and the backend loop again under the
	# race detector (it needs cgo).
	CGO_ENABLED=1 $(GO) test -race -count=1 ./cmd/weftd/node/ ./subnet/ ./backend/

# Unit tests only: no root, no kernel.
unit:
	$(GO) test -count=1 -short ./...

e2e: build
	WEFT_E2E_BIN_DIR=$(CURDIR)/bin $(GO) test -count=1 -timeout 20m ./e2e/...

# The Kubernetes e2e tests against a real kube-apiserver, which
# e2e/kubeapiserver/build.sh builds once (about 5 minutes) and caches in
# ~/.cache/weft. make test skips them (see e2e/README.md).
.PHONY: e2e-kube
e2e-kube: build
	apiserver=$$(e2e/kubeapiserver/build.sh) && \
	WEFT_E2E_BIN_DIR=$(CURDIR)/bin WEFT_KUBE_APISERVER=$$apiserver $(GO) test -count=1 -timeout 20m -run '^TestKube' -v ./e2e/

# weft's container image, without a Docker daemon: weftd, weftctl, the weft
# CNI plugin and weft-install-cni, static, for linux/$(IMAGE_ARCH), as an OCI
# image layout tar file (podman load -i bin/weft-image.tar). See
# dist/mkimage and Documentation/kubernetes.md.
IMAGE_ARCH ?= amd64
.PHONY: image
image:
	@mkdir -p bin/image
	GOOS=linux GOARCH=$(IMAGE_ARCH) $(GO) build -ldflags '$(LDFLAGS)' -o bin/image/ ./cmd/weftd ./cmd/weftctl ./dist/mkimage/weft-install-cni
	GOOS=linux GOARCH=$(IMAGE_ARCH) $(GO) build -ldflags '$(LDFLAGS)' -o bin/image/weft ./cni-plugin
	$(GO) run ./dist/mkimage -bin bin/image -arch $(IMAGE_ARCH) -version $(VERSION) -revision "$$(git rev-parse HEAD 2>/dev/null)" \
		-created "$${SOURCE_DATE_EPOCH:-$$(git log -1 --format=%ct 2>/dev/null || echo 0)}" -o bin/weft-image.tar

bench: build
	$(GO) test -run '^$$' -bench . -benchmem ./subnet/... ./backend/...
	./bin/weft-lab bench

demo: build
	./bin/weft-lab demo --hosts $(or $(HOSTS),3) --backend $(or $(BACKEND),vxlan) $(if $(KEEP),--keep,) $(if $(DUALSTACK),--dual-stack,)

install: build docs
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(CNIBIN) $(DESTDIR)/etc/systemd/system $(DESTDIR)/etc/weft $(DESTDIR)/etc/cni/net.d \
		$(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR)
	install -m 0755 bin/weftd bin/weftctl $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 bin/weftd.1 bin/weftctl.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 bin/weftctl.bash $(DESTDIR)$(BASHCOMPDIR)/weftctl
	install -m 0644 bin/_weftctl $(DESTDIR)$(ZSHCOMPDIR)/_weftctl
	install -m 0755 bin/weft $(DESTDIR)$(CNIBIN)/weft
	sed 's|@PREFIX@|$(PREFIX)|g' dist/weftd.service > bin/weftd.service
	install -m 0644 bin/weftd.service $(DESTDIR)/etc/systemd/system/weftd.service
	@# weftd.env may hold WEFTD_ETCD_PASSWORD: readable by root only. An
	@# existing one is the operator's: keep it, but say if others can read it.
	@f=$(DESTDIR)/etc/weft/weftd.env; \
	if [ -e "$$f" ]; then \
		case "$$(stat -c %a "$$f")" in \
		*00) ;; \
		*) echo "warning: $$f is readable by other users and may hold WEFTD_ETCD_PASSWORD: chmod 600 $$f" >&2 ;; \
		esac; \
	else \
		echo install -m 0600 dist/weftd.env "$$f"; \
		install -m 0600 dist/weftd.env "$$f"; \
	fi
	test -e $(DESTDIR)/etc/cni/net.d/10-weft.conflist || install -m 0644 dist/10-weft.conflist $(DESTDIR)/etc/cni/net.d/10-weft.conflist

version:
	@echo $(VERSION)

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin
