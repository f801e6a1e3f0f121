package vxlan

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestParseOptions(t *testing.T) {
	tests := []struct {
		name    string
		raw     string
		want    options
		wantErr string
	}{
		{name: "empty", raw: ``, want: options{VNI: 1, Port: 8472}},
		{name: "type only", raw: `{"Type":"vxlan"}`, want: options{VNI: 1, Port: 8472}},
		{name: "all", raw: `{"Type":"vxlan","VNI":7,"Port":4789,"MTU":1400,"GBP":true,"DirectRouting":true}`,
			want: options{VNI: 7, Port: 4789, MTU: 1400, GBP: true, DirectRouting: true}},
		{name: "case-insensitive", raw: `{"vni":3,"port":9000,"directrouting":true,"mtu":1300}`,
			want: options{VNI: 3, Port: 9000, MTU: 1300, DirectRouting: true}},
		{name: "bad VNI type", raw: `{"VNI":"one"}`, wantErr: "option VNI"},
		{name: "VNI too big", raw: `{"VNI":16777216}`, wantErr: "option VNI"},
		{name: "bad port", raw: `{"Port":70000}`, wantErr: "option Port"},
		{name: "bad MTU", raw: `{"MTU":20}`, wantErr: "option MTU"},
		{name: "bad DirectRouting", raw: `{"DirectRouting":"yes"}`, wantErr: "option DirectRouting"},
		{name: "bad GBP", raw: `{"gbp":1}`, wantErr: "option gbp"},
		{name: "not an object", raw: `[1]`, wantErr: "vxlan backend options"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseOptions(json.RawMessage(tt.raw))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got.Unknown = nil
			if got.VNI != tt.want.VNI || got.Port != tt.want.Port || got.MTU != tt.want.MTU ||
				got.GBP != tt.want.GBP || got.DirectRouting != tt.want.DirectRouting {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestRandomMAC(t *testing.T) {
	for i := 0; i < 100; i++ {
		m, err := randomMAC()
		if err != nil {
			t.Fatal(err)
		}
		if m[0]&1 != 0 || m[0]&2 == 0 || !usableMAC(m) {
			t.Fatalf("%s is not a locally administered unicast MAC", m)
		}
	}
}
