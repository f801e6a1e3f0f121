package routes

// Shrink returns m, or a copy of m sized to its entries when it holds at
// most half of the most it has held, *peak, which it updates. A Go map
// keeps the memory of its largest size: a backend's bookkeeping that grew
// to 20000 peers and went back to 10000 would otherwise keep room for 20000
// for good. The copy costs one pass over the entries, once per halving;
// maps that never held more than shrinkMin entries are left alone.
func Shrink[K comparable, V any](m map[K]V, peak *int) map[K]V {
	if n := len(m); *peak >= shrinkMin && n <= *peak/2 {
		c := make(map[K]V, n)
		for k, v := range m {
			c[k] = v
		}
		*peak = n
		return c
	}
	*peak = max(*peak, len(m))
	return m
}

// shrinkMin is the peak below which Shrink never copies: a small map's
// wasted room is not worth a copy.
const shrinkMin = 64
