package storage

import (
	"errors"
	"math/big"
	"regexp"
	"testing"
)

// FuzzInodeLimit: the inodeLimit parameter of a quota StorageClass is read as a
// positive decimal integer that fits the quota's 64 bits, nothing else.
func FuzzInodeLimit(f *testing.F) {
	for _, s := range []string{"1", "1000", "0", "-1", "+1", "", " 1", "1k", "0x10", "18446744073709551615", "18446744073709551616", "007"} {
		f.Add(s)
	}
	digits := regexp.MustCompile(`^[0-9]+$`)
	f.Fuzz(func(t *testing.T, v string) {
		got, err := inodeLimit(&Record{Parameters: map[string]string{ParamInodeLimit: v}})
		want, _ := new(big.Int).SetString(v, 10)
		ok := digits.MatchString(v) && want.Sign() > 0 && want.IsUint64()
		switch {
		case err != nil && ok:
			t.Fatalf("inodeLimit %q refused: %v", v, err)
		case err != nil && !errors.Is(err, ErrInvalid):
			t.Fatalf("inodeLimit %q: %v does not wrap ErrInvalid", v, err)
		case err == nil && (!ok || got != want.Uint64()):
			t.Fatalf("inodeLimit %q read as %d", v, got)
		}
	})
}
