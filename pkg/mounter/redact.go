package mounter

import (
	"regexp"
	"strings"
)

// Masked replaces a credential's value, as mount-utils' MountSensitive masks the
// options it is told are sensitive.
const Masked = "<masked>"

// credentialKeys are mount options whose value is a credential: ceph's secret=,
// cifs' and others' password= and its spellings, and a token. Their file
// counterparts (ceph's secretfile=, cifs' credentials=) name a path and are not.
var credentialKeys = []string{"secret", "password", "password2", "passwd", "pass", "token"}

// credential matches key=value of a credential key within a command line or an
// option list: the key starts the text or follows a separator, and the value runs to
// the next separator.
var credential = regexp.MustCompile(`(?i)(^|[\s,;'"(\[{])(` + strings.Join(credentialKeys, "|") + `)=([^\s,;'")\]}]*)`)

// CredentialOption returns the key of a mount option (key=value) whose value is a
// credential, with ok true; ok is false for any other option.
func CredentialOption(opt string) (key string, ok bool) {
	k, _, hasValue := strings.Cut(opt, "=")
	for _, c := range credentialKeys {
		if hasValue && strings.EqualFold(k, c) {
			return k, true
		}
	}
	return "", false
}

// Redact masks the value of every credential option in s (a mount command line, a
// helper's output, an error message): secret=AQD... becomes secret=<masked>.
func Redact(s string) string {
	return credential.ReplaceAllString(s, "${1}${2}="+Masked)
}

// RedactError is err with every credential in its message masked; errors.Is and
// errors.As still see err. Nil stays nil.
func RedactError(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if red := Redact(msg); red != msg {
		return &redactedError{msg: red, err: err}
	}
	return err
}

type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }
