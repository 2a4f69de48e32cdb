// Command render renders a Helm chart the way `helm template` does, for the chart checks on
// machines without helm or a cluster (test tooling, not product). It uses Helm's own engine:
// Go's text/template with the sprig function library, plus Helm's include, tpl, required,
// toYaml, fromYaml, toJson, fail and an empty lookup, and gives templates .Values (the chart's
// values.yaml, then each -f file, then each --set, merged as Helm merges them), .Release,
// .Chart, .Capabilities, .Template and .Files.Get.
//
//	render [-f values.yaml]... [--set a.b=c]... [--name NAME] [--namespace NS]
//	       [--kube-version 1.30.0] [--print-values] [--notes] CHART_DIR
//
// Prints the rendered manifests (each after "# Source: <chart>/templates/<file>"), or with
// --print-values the merged values as JSON (what values.schema.json is checked against), or with
// --notes the rendered NOTES.txt. A template error exits 1 with Helm's message.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

// chartFiles answers .Files.Get with a file of the chart ("" when it does not exist, as Helm).
type chartFiles struct{ dir string }

func (f chartFiles) Get(name string) string {
	b, err := os.ReadFile(filepath.Join(f.dir, filepath.Clean("/"+name)))
	if err != nil {
		return ""
	}
	return string(b)
}

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "render: error: "+format+"\n", args...)
	os.Exit(1)
}

// normalize turns yaml.v3's map[string]interface{} trees into the JSON-like shapes Helm uses.
func normalize(v interface{}) interface{} {
	switch t := v.(type) {
	case map[string]interface{}:
		for k, x := range t {
			t[k] = normalize(x)
		}
		return t
	case map[interface{}]interface{}:
		m := map[string]interface{}{}
		for k, x := range t {
			m[fmt.Sprint(k)] = normalize(x)
		}
		return m
	case []interface{}:
		for i, x := range t {
			t[i] = normalize(x)
		}
		return t
	case int:
		return float64(t)
	default:
		return v
	}
}

func readYAML(path string) map[string]interface{} {
	data, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	m := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &m); err != nil {
		fail("%s: %v", path, err)
	}
	return normalize(m).(map[string]interface{})
}

// merge lays src over dst as Helm does: maps merge key by key, anything else replaces; a null
// deletes the key.
func merge(dst, src map[string]interface{}) map[string]interface{} {
	for k, v := range src {
		if v == nil {
			delete(dst, k)
			continue
		}
		if sm, ok := v.(map[string]interface{}); ok {
			if dm, ok := dst[k].(map[string]interface{}); ok {
				dst[k] = merge(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
	return dst
}

// setValue applies one --set a.b.c=value (value typed as Helm types it: int, bool, null, string).
func setValue(values map[string]interface{}, assignment string) {
	eq := strings.Index(assignment, "=")
	if eq < 0 {
		fail("--set %q: expected key=value", assignment)
	}
	path := strings.Split(assignment[:eq], ".")
	raw := assignment[eq+1:]
	var value interface{} = raw
	if i, err := strconv.ParseInt(raw, 10, 64); err == nil {
		value = float64(i)
	} else if raw == "true" || raw == "false" {
		value = raw == "true"
	} else if raw == "null" {
		value = nil
	}
	m := values
	for _, key := range path[:len(path)-1] {
		next, ok := m[key].(map[string]interface{})
		if !ok {
			next = map[string]interface{}{}
			m[key] = next
		}
		m = next
	}
	m[path[len(path)-1]] = value
}

func toYAML(v interface{}) string {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(integral(v)); err != nil {
		return ""
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

// integral writes whole floats as integers (JSON numbers from values are float64).
func integral(v interface{}) interface{} {
	switch t := v.(type) {
	case map[string]interface{}:
		m := map[string]interface{}{}
		for k, x := range t {
			m[k] = integral(x)
		}
		return m
	case []interface{}:
		out := make([]interface{}, len(t))
		for i, x := range t {
			out[i] = integral(x)
		}
		return out
	case float64:
		if t == float64(int64(t)) {
			return int64(t)
		}
		return t
	default:
		return v
	}
}

func main() {
	var files, sets list
	flag.Var(&files, "f", "values file (repeatable)")
	flag.Var(&sets, "set", "key=value (repeatable)")
	name := flag.String("name", "trainfleet", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	kubeVersion := flag.String("kube-version", "1.30.0", "Kubernetes version for .Capabilities")
	printValues := flag.Bool("print-values", false, "print the merged values as JSON")
	notes := flag.Bool("notes", false, "print the rendered NOTES.txt")
	flag.Parse()
	if flag.NArg() != 1 {
		fail("usage: render [-f values.yaml]... [--set k=v]... CHART_DIR")
	}
	chartDir := flag.Arg(0)
	chart := readYAML(filepath.Join(chartDir, "Chart.yaml"))
	values := readYAML(filepath.Join(chartDir, "values.yaml"))
	for _, f := range files {
		values = merge(values, readYAML(f))
	}
	for _, s := range sets {
		setValue(values, s)
	}
	if *printValues {
		out, _ := json.MarshalIndent(values, "", "  ")
		fmt.Println(string(out))
		return
	}

	chartName := fmt.Sprint(chart["name"])
	root := template.New("chart")
	funcs := sprig.TxtFuncMap()
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := yaml.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return normalize(m).(map[string]interface{})
	}
	funcs["toJson"] = func(v interface{}) string {
		out, _ := json.Marshal(integral(v))
		return string(out)
	}
	funcs["required"] = func(message string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return nil, fmt.Errorf("%s", message)
		}
		return v, nil
	}
	funcs["fail"] = func(message string) (string, error) { return "", fmt.Errorf("%s", message) }
	funcs["lookup"] = func(...interface{}) map[string]interface{} { return map[string]interface{}{} }
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return buf.String(), err
	}
	root.Funcs(funcs).Option("missingkey=zero")

	paths, _ := filepath.Glob(filepath.Join(chartDir, "templates", "*"))
	sort.Strings(paths)
	var rendered []string
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			fail("%v", err)
		}
		rel := chartName + "/templates/" + filepath.Base(p)
		if _, err := root.New(rel).Parse(string(data)); err != nil {
			fail("parse error in %s", strings.TrimPrefix(err.Error(), "template: "))
		}
		rendered = append(rendered, rel)
	}
	kv := strings.TrimPrefix(*kubeVersion, "v")
	parts := strings.SplitN(kv, ".", 3)
	for len(parts) < 3 {
		parts = append(parts, "0")
	}
	top := map[string]interface{}{
		"Values": values,
		"Files":  chartFiles{dir: chartDir},
		"Release": map[string]interface{}{
			"Name": *name, "Namespace": *namespace, "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Chart": map[string]interface{}{
			"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"],
		},
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{
				"Version": "v" + kv, "Major": parts[0], "Minor": parts[1], "GitVersion": "v" + kv,
			},
			"APIVersions": apiVersions{},
		},
	}
	var out strings.Builder
	for _, rel := range rendered {
		base := filepath.Base(rel)
		isNotes := base == "NOTES.txt"
		if strings.HasPrefix(base, "_") || isNotes != *notes {
			continue
		}
		data := map[string]interface{}{}
		for k, v := range top {
			data[k] = v
		}
		data["Template"] = map[string]interface{}{"Name": rel, "BasePath": chartName + "/templates"}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, rel, data); err != nil {
			fail("execution error at (%s)", strings.TrimPrefix(err.Error(), "template: "))
		}
		if isNotes {
			out.WriteString(buf.String())
			continue
		}
		for _, doc := range strings.Split(buf.String(), "\n---") {
			if strings.TrimSpace(strings.TrimPrefix(doc, "---")) == "" {
				continue
			}
			out.WriteString("---\n# Source: " + rel + "\n" + strings.TrimSpace(strings.TrimPrefix(doc, "---")) + "\n")
		}
	}
	fmt.Print(out.String())
}

// apiVersions answers .Capabilities.APIVersions.Has for the groups a stock cluster serves (and
// monitoring.coreos.com/v1, so that a ServiceMonitor can be rendered when asked for).
type apiVersions struct{}

func (apiVersions) Has(v string) bool {
	switch v {
	case "v1", "apps/v1", "policy/v1", "networking.k8s.io/v1", "batch/v1",
		"monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor":
		return true
	}
	return false
}
