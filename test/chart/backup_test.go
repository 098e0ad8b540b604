package chart

import (
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

	for _, pool := range []string{"default", "nope", ""} {
		out, err := tryTemplate(t, backupValues+"backupSnapshotClass: {create: true, backupPool: \""+pool+"\"}\n")
		if err == nil || !strings.Contains(out, "must name a pool of kind shared") {
			t.Errorf("backupPool %q: %v\n%s", pool, err, out)
		}
	}
}
