package driver

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/berth-csi/berth/pkg/version"
	"k8s.io/client-go/rest"
)

// What the subcommands that call the API server (pv-lister, group-labeller, mover)
// share: their flags parsed and the common ones checked, then the in-cluster
// configuration of the pod they run in.

// parseAPIFlags parses args into fs (-h prints the defaults) and refuses
// positional arguments and an invalid --driver-name (driver, read after parsing).
func parseAPIFlags(fs *flag.FlagSet, args []string, driver *string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stderr)
			fs.PrintDefaults()
		}
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	case !driverName.MatchString(*driver):
		return fmt.Errorf("--driver-name %q: must be at most 63 characters of a-z, 0-9, '-', '.', starting and ending alphanumeric", *driver)
	}
	return nil
}

// checkLoggingFormat refuses a --logging-format other than text or json.
func checkLoggingFormat(format string) error {
	if format != "text" && format != "json" {
		return fmt.Errorf("--logging-format %q: must be text or json", format)
	}
	return nil
}

// inClusterConfig is the pod's API configuration, with the user agent
// berth-<component>/<version>.
func inClusterConfig(component string) (*rest.Config, error) {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster configuration (the %s runs in a pod, with a service-account token): %w", component, err)
	}
	cfg.UserAgent = "berth-" + component + "/" + version.Get()
	return cfg, nil
}
