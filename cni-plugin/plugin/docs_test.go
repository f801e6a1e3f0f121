package plugin

import (
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
)

// TestDocumentedFields keeps Documentation/cni.md's field table in step with
// NetConf: every field has a row, and the defaults in the rows are the ones
// the code applies.
func TestDocumentedFields(t *testing.T) {
	doc, err := os.ReadFile("../../Documentation/cni.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{}
	for _, line := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(line, "| `") {
			name := strings.Trim(strings.SplitN(line, "|", 3)[1], " `")
			rows[name] = line
		}
	}
	typ := reflect.TypeOf(NetConf{})
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		name := strings.Split(f.Tag.Get("json"), ",")[0]
		if f.Anonymous || !f.IsExported() || name == "-" {
			continue
		}
		if _, ok := rows[name]; !ok {
			t.Errorf("field %q is not documented in Documentation/cni.md", name)
		}
	}
	for name, def := range map[string]string{"subnetFile": DefaultSubnetFile, "dataDir": DefaultDataDir, "bridge": DefaultBridge} {
		if !strings.Contains(rows[name], "`"+def+"`") {
			t.Errorf("row for %q does not give the default %q: %s", name, def, rows[name])
		}
	}
}

// TestDistConflist checks that dist/10-weft.conflist is valid for the plugin.
func TestDistConflist(t *testing.T) {
	data, err := os.ReadFile("../../dist/10-weft.conflist")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		CNIVersion string            `json:"cniVersion"`
		Name       string            `json:"name"`
		Plugins    []json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		t.Fatal(err)
	}
	if list.CNIVersion != "1.1.0" || list.Name != "weft" || len(list.Plugins) != 2 {
		t.Fatalf("conflist header: %+v", list)
	}
	// libcni injects the list's name and version into each plugin's config.
	var entry map[string]any
	json.Unmarshal(list.Plugins[0], &entry)
	entry["name"], entry["cniVersion"] = list.Name, list.CNIVersion
	b, _ := json.Marshal(entry)
	conf, err := ParseConfig(b)
	if err != nil {
		t.Fatalf("weft entry: %v", err)
	}
	if conf.Type != "weft" || conf.SubnetFile != DefaultSubnetFile || conf.DataDir != DefaultDataDir {
		t.Fatalf("weft entry: %+v", conf)
	}
	var pm struct {
		Type         string          `json:"type"`
		Capabilities map[string]bool `json:"capabilities"`
	}
	json.Unmarshal(list.Plugins[1], &pm)
	if pm.Type != "portmap" || !pm.Capabilities["portMappings"] {
		t.Fatalf("portmap entry: %+v", pm)
	}
}
