package storage_test

import (
	"math/big"
	"regexp"
	"testing"

	"github.com/berth-csi/berth/pkg/storage"
)

// quantityRule is what ParseQuantity documents: an integer (strconv's optional sign
// included) with an optional binary or decimal suffix.
var quantityRule = regexp.MustCompile(`^([+-]?)([0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$`)

var quantitySuffix = map[string]int64{
	"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60,
	"k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
}

// referenceQuantity computes a quantity exactly, with big integers: ok is false for
// anything ParseQuantity must refuse (a malformed, negative or too large quantity).
func referenceQuantity(s string) (int64, bool) {
	m := quantityRule.FindStringSubmatch(s)
	if m == nil {
		return 0, false
	}
	n, _ := new(big.Int).SetString(m[2], 10)
	n.Mul(n, big.NewInt(quantitySuffix[m[3]]))
	if m[1] == "-" && n.Sign() != 0 || !n.IsInt64() {
		return 0, false
	}
	return n.Int64(), true
}

// FuzzParseQuantity: the size of an ephemeral inline volume (a pod's attribute) is
// never negative or overflowed, and agrees with an exact reference.
func FuzzParseQuantity(f *testing.F) {
	for _, s := range []string{
		"0", "1", "1Gi", "10Mi", "1k", "1K", "1G", "7Ei", "8Ei", "9E", "9223372036854775807",
		"9223372036854775808", "-1", "-0", "+5", "1.5Gi", "Gi", "", " 1", "1 ", "1e3", "0x10", "1_000",
		"1Gib", "1gi", "8589934591Gi", "8589934592Gi", "-9223372036854775808",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := storage.ParseQuantity(s)
		want, ok := referenceQuantity(s)
		switch {
		case err == nil && got < 0:
			t.Fatalf("ParseQuantity(%q) = %d", s, got)
		case err == nil && !ok:
			t.Fatalf("ParseQuantity(%q) = %d; the reference refuses it", s, got)
		case err != nil && ok:
			t.Fatalf("ParseQuantity(%q): %v; the reference reads %d", s, err, want)
		case err == nil && got != want:
			t.Fatalf("ParseQuantity(%q) = %d, want %d", s, got, want)
		}
	})
}
