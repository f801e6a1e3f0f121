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
	for i := range 49 {
		delete(m, i)
	}
	if got := Shrink(m, &peak); peak != 100 || len(got) != 51 {
		t.Fatalf("51 of 100 left: peak %d, %d entries (kept: more than half)", peak, len(got))
	}
	delete(m, 49)
	got := Shrink(m, &peak)
	if peak != 50 || !maps.Equal(got, m) {
		t.Fatalf("50 of 100 left: peak %d, copy %v", peak, got)
	}
	got[1000] = "y"
	if _, ok := m[1000]; ok {
		t.Fatal("the shrunk map is the old one")
	}

	small, speak := map[int]bool{1: true, 2: true}, 0
	Shrink(small, &speak)
	delete(small, 1)
	delete(small, 2)
	if got := Shrink(small, &speak); speak != 2 {
		t.Fatalf("a small map was copied: peak %d, %v", speak, got)
	}
}
