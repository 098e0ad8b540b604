package extents

import (
	"bytes"
	"context"
	"slices"
	"testing"
)

// list is a source over fixed extents.
type list []Extent

func (l *list) next() (Extent, bool, error) {
	if len(*l) == 0 {
		return Extent{}, false, nil
	}
	e := (*l)[0]
	*l = (*l)[1:]
	return e, true, nil
}

const k4 = BlockSize

func ext(logical, physical, length int64, flags uint32) Extent {
	return Extent{Logical: logical, Physical: physical, Length: length, Flags: flags}
}

func collect(t *testing.T, run func(emit func(Range) error) (Stats, error)) ([]Range, Stats) {
	t.Helper()
	var out []Range
	st, err := run(func(r Range) error { out = append(out, r); return nil })
	if err != nil {
		t.Fatal(err)
	}
	return out, st
}

// TestChangedFromExtents walks the cases the extents decide alone, on made-up maps.
func TestChangedFromExtents(t *testing.T) {
	const size = 64 * k4
	zeros := bytes.NewReader(make([]byte, size))
	for _, c := range []struct {
		name         string
		base, target list
		start        int64
		want         []Range
	}{
		{"both holes", nil, nil, 0, nil},
		{"shared", list{ext(0, 1000*k4, 8*k4, extShared)}, list{ext(0, 1000*k4, 8*k4, extShared)}, 0, nil},
		{"rewritten block in a shared extent",
			list{ext(0, 1000*k4, 8*k4, 0)},
			list{ext(0, 1000*k4, 3*k4, 0), ext(3*k4, 50*k4, k4, 0), ext(4*k4, 1004*k4, 4*k4, 0)},
			0, []Range{{3 * k4, k4}}},
		{"same physical at another offset is a change",
			list{ext(0, 1000*k4, 2*k4, 0)}, list{ext(k4, 1000*k4, 2*k4, 0)}, 0, []Range{{0, 3 * k4}}},
		{"written into a hole", nil, list{ext(10*k4, 5*k4, 2*k4, 0)}, 0, []Range{{10 * k4, 2 * k4}}},
		{"punched out", list{ext(10*k4, 5*k4, 2*k4, 0)}, nil, 0, []Range{{10 * k4, 2 * k4}}},
		{"unwritten against a hole", list{ext(0, 5*k4, 4*k4, extUnwritten)}, nil, 0, nil},
		{"adjacent changes merge", nil, list{ext(0, 5*k4, k4, 0), ext(k4, 90*k4, k4, 0)}, 0, []Range{{0, 2 * k4}}},
		{"start skips what ends before it", nil, list{ext(0, 5*k4, k4, 0), ext(8*k4, 90*k4, 2*k4, 0)}, 9*k4 + 1, []Range{{9 * k4, k4}}},
		{"past size is cut", nil, list{ext(62*k4, 5*k4, 8*k4, 0)}, 0, []Range{{62 * k4, 2 * k4}}},
		{"sub-block extents round out to blocks", nil, list{ext(k4+512, 5*k4, 1024, 0)}, 0, []Range{{k4, k4}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, _ := collect(t, func(emit func(Range) error) (Stats, error) {
				return changed(context.Background(), &c.base, &c.target, zeros, zeros, c.start, size, emit)
			})
			if !slices.Equal(got, c.want) {
				t.Errorf("got %v, want %v", got, c.want)
			}
		})
	}
}

// TestChangedComparesOpaqueExtents: at the same physical address, an extent whose
// address does not name its bytes alone (compressed) is compared byte for byte.
func TestChangedComparesOpaqueExtents(t *testing.T) {
	const size = 8 * k4
	b, tg := make([]byte, size), make([]byte, size)
	for i := range b {
		b[i], tg[i] = byte(i), byte(i)
	}
	tg[5*k4+17]++
	base := list{ext(0, 1000*k4, size, extEncoded)}
	target := list{ext(0, 1000*k4, size, extEncoded)}
	got, st := collect(t, func(emit func(Range) error) (Stats, error) {
		return changed(context.Background(), &base, &target, bytes.NewReader(b), bytes.NewReader(tg), 0, size, emit)
	})
	if want := []Range{{5 * k4, k4}}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if st.ComparedBytes != size {
		t.Errorf("compared %d bytes, want %d", st.ComparedBytes, size)
	}

	// A compressed extent's address is its start whatever the offset: the target
	// refers into the same extent from another logical start (the block before
	// was rewritten), and is compared, not reported.
	base = list{ext(0, 1000*k4, size, extEncoded)}
	target = list{ext(0, 50*k4, k4, 0), ext(k4, 1000*k4, size-k4, extEncoded)}
	tg = append([]byte(nil), b...)
	tg[0]++
	got, _ = collect(t, func(emit func(Range) error) (Stats, error) {
		return changed(context.Background(), &base, &target, bytes.NewReader(b), bytes.NewReader(tg), 0, size, emit)
	})
	if want := []Range{{0, k4}}; !slices.Equal(got, want) {
		t.Errorf("partial reference: got %v, want %v", got, want)
	}
}

// TestAllocatedFromExtents: unwritten extents are not data; ranges merge and are cut
// to the start's block and the size.
func TestAllocatedFromExtents(t *testing.T) {
	l := list{ext(0, 1, k4, 0), ext(k4, 9, k4, 0), ext(4*k4, 20, 2*k4, extUnwritten), ext(8*k4, 30, 4*k4, 0)}
	got, _ := collect(t, func(emit func(Range) error) (Stats, error) {
		return allocated(context.Background(), &l, k4+5, 10*k4, emit)
	})
	if want := []Range{{k4, k4}, {8 * k4, 2 * k4}}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// TestCancelled: a cancelled context stops a walk with its error.
func TestCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	l := list{ext(0, 1, k4, 0)}
	if _, err := allocated(ctx, &l, 0, k4, func(Range) error { return nil }); err != context.Canceled {
		t.Errorf("err %v, want context.Canceled", err)
	}
}
