package chart

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const backupValues = `pools:
- {name: default, path: /var/lib/berth/default, kind: dir}
- {name: backups, path: /mnt/backups/pool, kind: shared}
sidecars: {snapshotter: {enabled: true}}
`

// backupSnapshotClass renders a class whose backupPool is the shared pool named,
// labelled for Velero when asked; the node pods then run the group-labeller for the
// shared pool's pre-provisioned contents. A backupPool that is not a shared pool
// of the release is refused, naming the value.
func TestBackupSnapshotClass(t *testing.T) {
	if _, ok := render(t, "")["VolumeSnapshotClass/berth-backup"]; ok {
		t.Error("a backup class rendered with the default values")
	}
	docs := renderDocs(t, backupValues+"backupSnapshotClass: {create: true, backupPool: backups, velero: true}\n")
	class := string(docs["VolumeSnapshotClass/berth-backup"])
	for _, want := range []string{"backupPool: \"backups\"", "velero.io/csi-volumesnapshot-class: \"true\"", "deletionPolicy: Delete", "driver: berth.csi.io"} {
		if !strings.Contains(class, want) {
			t.Errorf("backup class lacks %q:\n%s", want, class)
		}
	}
	args := render(t, backupValues)["DaemonSet/berth-node"].args("group-labeller")
	if !strings.Contains(strings.Join(args, " "), "--shared-pools=backups --group-snapshots=false") {
		t.Errorf("group-labeller args %q, want it for the shared pool without group snapshots", args)
	}

	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin, kube := helm(t, root)
	for _, pool := range []string{"default", "nope", ""} {
		values := filepath.Join(t.TempDir(), "values.yaml")
		if err := os.WriteFile(values, []byte(backupValues+"backupSnapshotClass: {create: true, backupPool: \""+pool+"\"}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bin, "template", "berth", filepath.Join(root, "charts", "berth"), "--kube-version", kube, "-f", values).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "must name a pool of kind shared") {
			t.Errorf("backupPool %q: %v\n%s", pool, err, out)
		}
	}
}
