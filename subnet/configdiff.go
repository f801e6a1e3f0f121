package subnet

import (
	"bytes"
	"encoding/json"
	"maps"
	"reflect"
	"slices"
	"strings"
)

// ConfigDiff names the fields in which two valid configs differ in meaning:
// field names are compared case-insensitively (as they are parsed), derived
// values after their defaults are applied, and JSON formatting not at all.
// sameOptions, if not nil, is the backend's own comparison of two Backend
// objects with their defaults applied (backend.Descriptor.SameOptions);
// then a difference there is reported as "Backend". It returns nil when
// the configs mean the same network.
func ConfigDiff(a, b *Config, sameOptions func(a, b json.RawMessage) bool) []string {
	var out []string
	add := func(field string, differ bool) {
		if differ {
			out = append(out, field)
		}
	}
	add("Network", a.Network != b.Network)
	add("SubnetLen", a.SubnetLen != b.SubnetLen)
	add("SubnetMin", a.SubnetMin != b.SubnetMin)
	add("SubnetMax", a.SubnetMax != b.SubnetMax)
	add("EnableIPv6", a.EnableIPv6 != b.EnableIPv6)
	if a.EnableIPv6 && b.EnableIPv6 {
		add("IPv6Network", a.IPv6.Network != b.IPv6.Network)
		add("IPv6SubnetLen", a.IPv6.SubnetLen != b.IPv6.SubnetLen)
		add("IPv6SubnetMin", a.IPv6.SubnetMin != b.IPv6.SubnetMin)
		add("IPv6SubnetMax", a.IPv6.SubnetMax != b.IPv6.SubnetMax)
	}
	add("EnableNFTables", a.EnableNFTables != b.EnableNFTables)
	add("Backend.Type", a.BackendType != b.BackendType)
	if a.BackendType == b.BackendType && sameOptions != nil {
		add("Backend", !sameOptions(a.Backend, b.Backend))
	} else if a.BackendType == b.BackendType {
		ao, bo := foldKeys(a.Backend), foldKeys(b.Backend)
		for _, k := range slices.Sorted(maps.Keys(union(ao, bo))) {
			if k == "type" {
				continue
			}
			add("Backend."+k, !reflect.DeepEqual(ao[k], bo[k]))
		}
	}
	return out
}

// foldKeys decodes a Backend object with its keys lower-cased.
func foldKeys(raw json.RawMessage) map[string]any {
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if dec.Decode(&m) != nil {
		return map[string]any{}
	}
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[strings.ToLower(k)] = v
	}
	return out
}

func union(a, b map[string]any) map[string]bool {
	u := make(map[string]bool, len(a)+len(b))
	for k := range a {
		u[k] = true
	}
	for k := range b {
		u[k] = true
	}
	return u
}
