// Package driver wires the engine and the CSI services together from the command line.
package driver

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/berth-csi/berth/pkg/metrics"
	"github.com/berth-csi/berth/pkg/registration"
	"github.com/berth-csi/berth/pkg/server"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/storage/podfreeze"
	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
)

// Modes the driver runs in.
const (
	ModeAll        = "all"
	ModeController = "controller"
	ModeNode       = "node"
)

// Options are the validated command-line settings.
type Options struct {
	Endpoint      string // socket path
	NodeID        string
	DriverName    string
	Mode          string
	ConfigPath    string
	Config        storage.Config
	KubeletDir    string
	MaxVolumes    int64
	LoggingFormat string
	ShowVersion   bool

	// Register is true when the node service registers itself with the kubelet
	// (--registration, decided from "auto" here) at RegistrationPath, telling it
	// the CSI socket is at RegistrationEndpoint (as the kubelet sees it).
	Register             bool
	RegistrationPath     string
	RegistrationEndpoint string
	HealthPort           int // 0: no /healthz server
	// MetricsAddress is where GET /metrics is served (host:port); "": nowhere.
	MetricsAddress string

	// PoolRetry is how often pools that cannot be served are tried again.
	PoolRetry time.Duration
	// CgroupRoot is where the host's cgroup filesystems are mounted: group
	// snapshots pause the pods that write directory volumes there (podfreeze).
	CgroupRoot string

	// OrphanScanInterval is how often the orphan scan counts the volumes no
	// PersistentVolume names (0: never); PVListerEndpoint is the socket of the
	// pv-lister it asks for the PersistentVolumes, which also answers where a
	// volume or snapshot lives (locate.NewSocketLocator), for copies between nodes.
	OrphanScanInterval time.Duration
	PVListerEndpoint   string

	// TransferAddress is where this node's plugin serves its volumes and
	// snapshots to the other nodes' (host:port; "": nowhere), with a
	// certificate minted from the CA in TransferCADir; TransferRateLimit bounds
	// what it sends, in bytes a second (0: no bound).
	TransferAddress   string
	TransferCADir     string
	TransferRateLimit int64
	// SnapshotMetadataAddress is where this node's plugin serves changed-block
	// tracking (SnapshotMetadata) to the other nodes' plugins, with the transfer
	// channel's certificates (host:port; "": nowhere); the port is also where it
	// asks them about snapshots its own pools do not hold.
	SnapshotMetadataAddress string

	// Host is what the engine reaches the machine through; the zero value is the
	// machine itself. Tests set a fake (internal/fakehost); no flag does.
	Host storage.Host
}

// driverName follows the CSI rule: at most 63 characters, a domain-like name.
var driverName = regexp.MustCompile(`^[a-zA-Z0-9]([-a-zA-Z0-9.]{0,61}[a-zA-Z0-9])?$`)

// nodeID follows the CSI rule for a topology segment value, which the node ID is
// (NodeGetInfo's topology.berth.csi.io/node); the kubelet makes it a node label.
var nodeID = regexp.MustCompile(`^[a-zA-Z0-9]([-_a-zA-Z0-9.]{0,61}[a-zA-Z0-9])?$`)

// ParseFlags reads and validates the command line. Any invalid flag or configuration
// is an error naming the problem, so the process exits non-zero.
func ParseFlags(prog string, args []string) (Options, error) {
	fs := flag.NewFlagSet(prog, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var o Options
	var endpoint string
	defaultNode := os.Getenv("NODE_NAME")
	if defaultNode == "" {
		defaultNode, _ = os.Hostname()
	}
	fs.StringVar(&endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint: unix socket path (unix:///path or /path)")
	fs.StringVar(&o.NodeID, "node-id", defaultNode, "this node's ID (default: $NODE_NAME, else the hostname)")
	fs.StringVar(&o.DriverName, "driver-name", "berth.csi.io", "CSI driver name")
	fs.StringVar(&o.Mode, "mode", ModeAll, "services to serve: all, controller or node")
	fs.StringVar(&o.ConfigPath, "config", "", "pool configuration file (YAML); default: one pool of kind auto (quota where the filesystem enforces project quotas, else dir) at "+storage.DefaultPoolPath)
	fs.StringVar(&o.KubeletDir, "kubelet-dir", "/var/lib/kubelet", "kubelet root directory; publish targets must lie under it")
	fs.Int64Var(&o.MaxVolumes, "max-volumes-per-node", 0, "volumes this node may hold, reported to the scheduler (0: no limit)")
	fs.StringVar(&o.LoggingFormat, "logging-format", "text", "log format: text or json")
	fs.BoolVar(&o.ShowVersion, "version", false, "print the version and exit")
	var registration string
	fs.StringVar(&registration, "registration", "auto", "register with the kubelet: auto (in node and all modes, when <kubelet-dir>/plugins_registry exists), on or off")
	fs.StringVar(&o.RegistrationEndpoint, "kubelet-registration-path", "", "the CSI socket as the kubelet sees it (default: the --endpoint path)")
	fs.IntVar(&o.HealthPort, "health-port", 0, "serve GET /healthz and /readyz on 127.0.0.1:<port> (0: off)")
	fs.StringVar(&o.MetricsAddress, "metrics-address", "", "serve Prometheus metrics at GET /metrics on host:port, e.g. the node's IP (0.0.0.0:port listens on every interface; empty: off)")
	fs.DurationVar(&o.PoolRetry, "pool-retry-interval", storage.DefaultPoolRetry, "how often a pool that cannot be served is tried again")
	fs.DurationVar(&o.OrphanScanInterval, "orphan-scan-interval", 0, "how often to count the volumes no PersistentVolume names (berth_pool_orphan_volumes), 1m to 24h; 0: never")
	var pvLister string
	fs.StringVar(&pvLister, "pv-lister-endpoint", DefaultPVListerEndpoint, "socket of the pv-lister (csi-driver pv-lister) that the orphan scan asks for the PersistentVolumes, and copies between nodes where a volume or snapshot lives")
	fs.StringVar(&o.CgroupRoot, "cgroup-root", podfreeze.DefaultRoot, "where the host's cgroup filesystems are mounted: group snapshots pause the pods that write directory volumes through their cgroups")
	fs.StringVar(&o.TransferAddress, "transfer-address", "", "serve this node's volumes and snapshots to the other nodes' plugins (the transfer channel, mutual TLS) on host:port, e.g. the node's IP (empty: off; node and all modes)")
	fs.StringVar(&o.TransferCADir, "transfer-ca-dir", DefaultTransferCADir, "directory holding the cluster's transfer CA (ca.crt, ca.key), from which this node mints its transfer certificate")
	fs.StringVar(&o.SnapshotMetadataAddress, "snapshot-metadata-address", "", "serve changed-block tracking (SnapshotMetadata) of this node's snapshots to the other nodes' plugins on host:port (mutual TLS with the transfer channel's certificates), and forward the calls for snapshots of other nodes to theirs, at the same port (empty: off; needs --transfer-address)")
	var transferRate string
	fs.StringVar(&transferRate, "transfer-rate-limit", "0", "bytes a second all transfers from this node may send together, a quantity such as 100Mi (0: no bound)")
	klog.InitFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stderr)
			fs.PrintDefaults()
		}
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if o.ShowVersion {
		return o, nil
	}
	var err error
	if o.Endpoint, err = server.ParseEndpoint(endpoint); err != nil {
		return o, fmt.Errorf("--endpoint: %w", err)
	}
	switch {
	case o.Mode != ModeAll && o.Mode != ModeController && o.Mode != ModeNode:
		return o, fmt.Errorf("--mode %q: must be all, controller or node", o.Mode)
	case !nodeID.MatchString(o.NodeID):
		return o, fmt.Errorf("--node-id %q: must be 1-63 characters of a-z, A-Z, 0-9, '-', '_', '.', starting and ending alphanumeric, as it is the node's topology value (set --node-id or NODE_NAME)", o.NodeID)
	case !driverName.MatchString(o.DriverName):
		return o, fmt.Errorf("--driver-name %q: must be at most 63 characters of a-z, 0-9, '-', '.', starting and ending alphanumeric", o.DriverName)
	case o.MaxVolumes < 0:
		return o, fmt.Errorf("--max-volumes-per-node %d: must not be negative", o.MaxVolumes)
	case o.LoggingFormat != "text" && o.LoggingFormat != "json":
		return o, fmt.Errorf("--logging-format %q: must be text or json", o.LoggingFormat)
	case o.PoolRetry < time.Second || o.PoolRetry > time.Hour:
		return o, fmt.Errorf("--pool-retry-interval %s: must be from 1s to 1h", o.PoolRetry)
	case o.OrphanScanInterval != 0 && (o.OrphanScanInterval < time.Minute || o.OrphanScanInterval > 24*time.Hour):
		return o, fmt.Errorf("--orphan-scan-interval %s: must be 0 (off) or from 1m to 24h", o.OrphanScanInterval)
	case !filepath.IsAbs(o.CgroupRoot):
		return o, fmt.Errorf("--cgroup-root %q: must be an absolute path", o.CgroupRoot)
	}
	if o.PVListerEndpoint, err = server.ParseEndpoint(pvLister); err != nil {
		return o, fmt.Errorf("--pv-lister-endpoint: %w", err)
	}
	if err := o.checkTransfer(transferRate); err != nil {
		return o, err
	}
	if o.MetricsAddress != "" {
		if err := metrics.CheckAddress(o.MetricsAddress); err != nil {
			return o, fmt.Errorf("--metrics-address %w", err)
		}
	}
	if err := o.resolveRegistration(registration); err != nil {
		return o, err
	}
	o.Config = storage.DefaultConfig()
	if o.ConfigPath != "" {
		if o.Config, err = storage.LoadConfig(o.ConfigPath); err != nil {
			return o, fmt.Errorf("--config: %w", err)
		}
	}
	setLoggingFormat(o.LoggingFormat)
	return o, nil
}

// setLoggingFormat sends klog's lines to stderr as JSON for "json"; "text" is
// klog's own format.
func setLoggingFormat(format string) {
	if format == "json" {
		// klog keeps filtering by -v; the slog handler passes everything it is given,
		// each key once (jsonlog.go).
		h := slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.Level(-128)})
		klog.SetLogger(logr.FromSlogHandler(uniqueKeys{inner: h}))
	}
}

// resolveRegistration validates the registration and health flags and decides "auto".
func (o *Options) resolveRegistration(mode string) error {
	if o.HealthPort < 0 || o.HealthPort > 65535 {
		return fmt.Errorf("--health-port %d: must be 0-65535", o.HealthPort)
	}
	if o.RegistrationEndpoint == "" {
		o.RegistrationEndpoint = o.Endpoint
	}
	if !filepath.IsAbs(o.RegistrationEndpoint) {
		return fmt.Errorf("--kubelet-registration-path %q: must be an absolute socket path", o.RegistrationEndpoint)
	}
	o.RegistrationPath = registration.SocketPath(registration.RegistryDir(o.KubeletDir), o.DriverName)
	switch mode {
	case "off":
		o.Register = false
	case "on":
		if o.Mode == ModeController {
			return errors.New("--registration on: only the node service registers (use --mode node or all)")
		}
		o.Register = true
	case "auto":
		fi, err := os.Stat(registration.RegistryDir(o.KubeletDir))
		o.Register = o.Mode != ModeController && err == nil && fi.IsDir()
	default:
		return fmt.Errorf("--registration %q: must be auto, on or off", mode)
	}
	return nil
}
