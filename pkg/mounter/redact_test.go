package mounter_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/berth-csi/berth/pkg/mounter"
)

func TestRedact(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"ceph command line",
			"mount -t ceph -o nosuid,nodev,name=admin,secret=AQDhunter2+/== 10.0.0.1:6789:/ /var/lib/berth/ceph: exit status 32",
			"mount -t ceph -o nosuid,nodev,name=admin,secret=<masked> 10.0.0.1:6789:/ /var/lib/berth/ceph: exit status 32"},
		{"first option", "-o secret=hunter2,nodev", "-o secret=<masked>,nodev"},
		{"option list alone", "secret=hunter2", "secret=<masked>"},
		{"several and any case", "password=a,PASS=b,passwd=c,password2=d,Token=e",
			"password=<masked>,PASS=<masked>,passwd=<masked>,password2=<masked>,Token=<masked>"},
		{"quoted in output", `mount error: bad option "secret=hunter2"`, `mount error: bad option "secret=<masked>"`},
		{"file options stay", "secretfile=/etc/berth/secrets/ceph/key,credentials=/etc/c", "secretfile=/etc/berth/secrets/ceph/key,credentials=/etc/c"},
		{"not a key of its own", "mysecret=x,passes=y,nopassword=z", "mysecret=x,passes=y,nopassword=z"},
		{"empty value", "secret=,nodev", "secret=<masked>,nodev"},
		{"nothing to hide", "mount: exit status 1", "mount: exit status 1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := mounter.Redact(tc.in); got != tc.want {
				t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestRedactError(t *testing.T) {
	base := errors.New("exit status 32")
	err := mounter.RedactError(errors.Join(errors.New("mount -o secret=hunter2 src /mnt"), base))
	if strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("credential in %q", err)
	}
	if !errors.Is(err, base) {
		t.Errorf("RedactError hides the cause from errors.Is")
	}
	if mounter.RedactError(nil) != nil {
		t.Errorf("RedactError(nil) is not nil")
	}
	if err := mounter.RedactError(base); err != base {
		t.Errorf("an error with nothing to hide is wrapped: %v", err)
	}
}

func TestCredentialOption(t *testing.T) {
	for opt, want := range map[string]bool{
		"secret=x": true, "SECRET=x": true, "password=": true, "pass=p": true, "token=t": true,
		"secretfile=/etc/k": false, "name=admin": false, "secret": false, "backup-volfile-servers=a:b": false,
	} {
		if _, got := mounter.CredentialOption(opt); got != want {
			t.Errorf("CredentialOption(%q) = %v, want %v", opt, got, want)
		}
	}
}
