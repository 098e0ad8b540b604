package kubectlberth

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"
)

// Executor runs a command in a pod's container (pods/exec) and returns its output
// and exit code; err is for a command that could not be run at all.
type Executor interface {
	Exec(ctx context.Context, namespace, pod, container string, command []string) (out string, code int, err error)
}

// podExecutor is pods/exec over WebSocket, falling back to SPDY for API servers that
// cannot upgrade to it, as kubectl exec does.
type podExecutor struct {
	config *rest.Config
	kube   kubernetes.Interface
}

func (e *podExecutor) Exec(ctx context.Context, namespace, pod, container string, command []string) (string, int, error) {
	req := e.kube.CoreV1().RESTClient().Post().Resource("pods").Namespace(namespace).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: command, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	spdy, err := remotecommand.NewSPDYExecutor(e.config, "POST", req.URL())
	if err != nil {
		return "", 0, err
	}
	ws, err := remotecommand.NewWebSocketExecutor(e.config, "GET", req.URL().String())
	if err != nil {
		return "", 0, err
	}
	ex, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return "", 0, err
	}
	var out bytes.Buffer
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out, Stderr: &out})
	var exit utilexec.CodeExitError
	if errors.As(err, &exit) {
		return out.String(), exit.Code, nil
	}
	if err != nil {
		return out.String(), 0, fmt.Errorf("exec in pod %s/%s: %w", namespace, pod, err)
	}
	return out.String(), 0, nil
}
