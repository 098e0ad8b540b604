# Berth's image: a static csi-driver on Debian slim with only what the node service runs
# (mkfs/resize for image pools, losetup/mount tools). The local cluster assembles the same
# image without a Docker engine: hack/images.sh, from the same hack/image-packages.txt.
ARG GO_VERSION=1.26
ARG DEBIAN_RELEASE=bookworm

FROM golang:${GO_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=devel
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/berth-csi/berth/pkg/version.Version=${VERSION}" \
      -o /out/csi-driver ./cmd/csi-driver

FROM debian:${DEBIAN_RELEASE}-slim
COPY hack/image-packages.txt /tmp/
RUN apt-get update \
 && grep -v '^#' /tmp/image-packages.txt | xargs apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/image-packages.txt
COPY --from=build /out/csi-driver /csi-driver
ENTRYPOINT ["/csi-driver"]
