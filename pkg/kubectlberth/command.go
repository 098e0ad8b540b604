// Package kubectlberth is `kubectl berth`, the kubectl plugin that shows Berth's
// pools and volumes and what needs an operator (pools.go, volumes.go, doctor.go,
// fix.go), rebuilds a claim whose node is lost from its backup (recover.go), and
// moves claims between nodes (move.go, evacuate.go: VolumeMoves, which the chart's
// mover runs).
// It reads the API objects and the driver pods' metrics through the API server
// (fetch.go, metrics.go), so it needs nothing but a kubeconfig.
package kubectlberth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// ErrAttention: doctor found something that needs an operator. The command exits 1
// on it, 2 on any other error.
var ErrAttention = errors.New("something needs attention")

// Streams are the command's standard input and outputs.
type Streams struct {
	In          io.Reader
	Out, ErrOut io.Writer
}

// Options are the flags every command shares, and the clients built from them.
type Options struct {
	Streams
	DriverName      string
	DriverNamespace string
	Output          string

	// NewClients builds the clients (the kubeconfig's; tests give fakes) and
	// Namespace is the namespace -n or the kubeconfig's context names.
	NewClients func() (*Clients, error)
	Namespace  func() (string, error)
	// Interval is the pause between doctor's two reads of the metrics.
	Interval time.Duration
	// Poll is the pause between recover's reads while it waits for a claim.
	Poll time.Duration
}

// NewCommand is the root command, `kubectl berth`, with the kubeconfig's usual
// flags (--kubeconfig, --context, -n...).
func NewCommand(s Streams) *cobra.Command {
	o := &Options{Streams: s}
	root := newRoot(o)
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	overrides := &clientcmd.ConfigOverrides{}
	flags := root.PersistentFlags()
	flags.StringVar(&rules.ExplicitPath, clientcmd.RecommendedConfigPathFlag, "", "path to the kubeconfig file")
	clientcmd.BindOverrideFlags(overrides, flags, clientcmd.RecommendedConfigOverrideFlags(""))
	cfg := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
	o.NewClients = func() (*Clients, error) { return clientsFor(cfg) }
	o.Namespace = func() (string, error) {
		ns, _, err := cfg.Namespace()
		return ns, err
	}
	return root
}

// newRoot is the command tree over o, without the kubeconfig's flags.
func newRoot(o *Options) *cobra.Command {
	root := &cobra.Command{
		Use:           "kubectl-berth",
		Annotations:   map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl berth"},
		Short:         "Berth's pools and volumes, what needs an operator, recovering a claim whose node is lost, moving claims between nodes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	flags := root.PersistentFlags()
	flags.StringVar(&o.DriverName, "driver", "berth.csi.io", "the CSI driver name (the chart's driverName)")
	flags.StringVar(&o.DriverNamespace, "driver-namespace", "", "namespace of the driver's pods (default: found in every namespace by their label app.kubernetes.io/name=berth)")
	flags.StringVarP(&o.Output, "output", "o", "", "output format: json or yaml (default: a table)")
	root.AddCommand(newPoolsCommand(o), newVolumesCommand(o), newDoctorCommand(o), newRecoverCommand(o),
		newMoveCommand(o), newEvacuateCommand(o))
	return root
}

func clientsFor(cfg clientcmd.ClientConfig) (*Clients, error) {
	rc, err := cfg.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	rc = rest.CopyConfig(rc)
	rc.UserAgent = "kubectl-berth"
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	return &Clients{Kube: kube, Dynamic: dyn, Exec: &podExecutor{config: rc, kube: kube}}, nil
}

// run checks the output flag, builds the clients and runs f.
func (o *Options) run(cmd *cobra.Command, f func(context.Context, *Clients) error) error {
	if err := checkOutput(o.Output); err != nil {
		return err
	}
	c, err := o.NewClients()
	if err != nil {
		return err
	}
	return f(cmd.Context(), c)
}

// runIn is run for a command on the namespace -n names (or the kubeconfig's
// context), or on every namespace ("") with all.
func (o *Options) runIn(cmd *cobra.Command, all bool, f func(context.Context, *Clients, string) error) error {
	return o.run(cmd, func(ctx context.Context, c *Clients) error {
		ns := ""
		if !all {
			var err error
			if ns, err = o.Namespace(); err != nil {
				return err
			}
		}
		return f(ctx, c, ns)
	})
}
