package routes

import (
	"maps"
	"testing"
)

func TestShrink(t *testing.T) {
	m := map[int]string{}
	peak := 0
	for i := range 100 {
		m[i] = "x"
	}
	if got := Shrink(m, &peak); peak != 100 || len(got) != 100 {
		t.Fatalf("grown: peak %d, %d entries", peak, len(got))
	}
	for i := range 40 {
		delete(m, i)
	}
	if got := Shrink(m, &peak); peak != 100 || len(got) != 60 {
		t.Fatalf("60 of 100 left: peak %d, %d entries (kept: not below half)", peak, len(got))
	}
	for i := 40; i < 80; i++ {
		delete(m, i)
	}
	got := Shrink(m, &peak)
	if peak != 20 || !maps.Equal(got, m) {
		t.Fatalf("20 of 100 left: peak %d, copy %v", peak, got)
	}
	got[1000] = "y"
	if _, ok := m[1000]; ok {
		t.Fatal("the shrunk map is the old one")
	}
}
