package etcd

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
)

// TestFlags: the one etcd option set resolves a flag over WEFTD_ over
// FLANNELD_, splits endpoints, trims the prefix and names the bad flag.
func TestFlags(t *testing.T) {
	resolve := func(args []string, env map[string]string) (ClientOptions, string, error) {
		t.Helper()
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		f := BindFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return f.Resolve(EnvSetting(func(k string) string { return env[k] }))
	}
	o, prefix, err := resolve(nil, nil)
	if err != nil || strings.Join(o.Endpoints, ",") != DefaultEndpoints || prefix != DefaultPrefix {
		t.Fatalf("defaults: %v %q %v", o.Endpoints, prefix, err)
	}
	env := map[string]string{"FLANNELD_ETCD_ENDPOINTS": "http://f:2379", "WEFTD_ETCD_ENDPOINTS": "http://w:2379, http://w2:2379",
		"FLANNELD_ETCD_PREFIX": "/x/", "FLANNELD_ETCD_CAFILE": "/ca.pem"}
	o, prefix, err = resolve(nil, env)
	if err != nil || strings.Join(o.Endpoints, ",") != "http://w:2379,http://w2:2379" || prefix != "/x" || o.CAFile != "/ca.pem" || !o.UsesTLS() {
		t.Fatalf("environment: %+v %q %v", o, prefix, err)
	}
	o, _, _ = resolve([]string{"--etcd-endpoints=http://flag:2379"}, env)
	if strings.Join(o.Endpoints, ",") != "http://flag:2379" {
		t.Fatalf("the flag does not win: %v", o.Endpoints)
	}
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{[]string{"--etcd-endpoints= , "}, "--etcd-endpoints"},
		{[]string{"--etcd-prefix=relative"}, "--etcd-prefix"},
		{[]string{"--etcd-certfile=/c.pem"}, "--etcd-certfile"},
	} {
		_, _, err := resolve(tc.args, nil)
		if err == nil || !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("%v: %v, want an error naming %s", tc.args, err, tc.flag)
		}
	}
	if _, _, err := resolve([]string{"--etcd-keyfile=/k.pem"}, nil); !errors.Is(err, ErrTLSOptions) {
		t.Errorf("key without certificate: %v, want ErrTLSOptions", err)
	}
}
