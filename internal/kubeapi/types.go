package kubeapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// ObjectMeta is the part of an object's metadata that weft reads.
// CreationTimestamp is kept as the API server wrote it: weft only
// compares it.
type ObjectMeta struct {
	Name              string            `json:"name"`
	Namespace         string            `json:"namespace,omitempty"`
	UID               string            `json:"uid,omitempty"`
	ResourceVersion   string            `json:"resourceVersion,omitempty"`
	CreationTimestamp string            `json:"creationTimestamp,omitempty"`
	Annotations       map[string]string `json:"annotations,omitempty"`
}

// Node is the part of a core/v1 Node that weft reads. A Node is never
// changed once decoded: caches share it.
type Node struct {
	ObjectMeta `json:"metadata"`
	Spec       NodeSpec   `json:"spec"`
	Status     NodeStatus `json:"status"`

	// Invalid is why the Node did not decode, when it did not: only Name
	// and ResourceVersion are then set (as far as they decoded).
	Invalid string `json:"-"`
}

// NodeSpec is the part of a Node's spec that weft reads.
type NodeSpec struct {
	PodCIDR  string   `json:"podCIDR,omitempty"`
	PodCIDRs []string `json:"podCIDRs,omitempty"`
}

// NodeStatus is the part of a Node's status that weft reads.
type NodeStatus struct {
	Conditions []NodeCondition `json:"conditions,omitempty"`
}

// NodeCondition is one of a Node's status.conditions. The times are
// RFC 3339 strings, as the API server writes them.
type NodeCondition struct {
	Type               string `json:"type"`
	Status             string `json:"status"`
	Reason             string `json:"reason,omitempty"`
	Message            string `json:"message,omitempty"`
	LastHeartbeatTime  string `json:"lastHeartbeatTime,omitempty"`
	LastTransitionTime string `json:"lastTransitionTime,omitempty"`
}

// Node condition NetworkUnavailable, which a network plugin sets.
const (
	NodeNetworkUnavailable = "NetworkUnavailable"
	ConditionFalse         = "False"
	ConditionTrue          = "True"
)

// Condition returns the Node's condition of type typ, or nil.
func (n *Node) Condition(typ string) *NodeCondition {
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == typ {
			return &n.Status.Conditions[i]
		}
	}
	return nil
}

// Pod is the part of a core/v1 Pod that weft reads.
type Pod struct {
	ObjectMeta `json:"metadata"`
	Spec       struct {
		NodeName string `json:"nodeName,omitempty"`
	} `json:"spec"`
}

// DecodeNode decodes one Node. A Node that does not decode (a field of
// the wrong type) is returned with Invalid set, its name and
// resourceVersion if those decode, and no error: it is one bad object,
// not a bad answer. The error is for input that is not a JSON object.
func DecodeNode(raw []byte) (*Node, error) {
	n := &Node{}
	err := json.Unmarshal(raw, n)
	if err == nil {
		return n, nil
	}
	var meta struct {
		Metadata struct {
			Name            string `json:"name"`
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
	}
	if json.Unmarshal(raw, &meta) != nil {
		var obj map[string]json.RawMessage
		if json.Unmarshal(raw, &obj) != nil {
			return nil, fmt.Errorf("node is not a JSON object: %w", err)
		}
	}
	return &Node{ObjectMeta: ObjectMeta{Name: meta.Metadata.Name, ResourceVersion: meta.Metadata.ResourceVersion},
		Invalid: fmt.Sprintf("node does not decode: %v", err)}, nil
}

// Status is the API server's answer to a failed request (kind Status).
type Status struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Code    int    `json:"code,omitempty"`
}

// StatusError is a request the API server refused.
type StatusError struct {
	Code    int    // HTTP status
	Reason  string // e.g. "NotFound", "Expired"; may be empty
	Message string
}

func (e *StatusError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Code)
	}
	if e.Reason != "" {
		return fmt.Sprintf("%s (%d %s)", msg, e.Code, e.Reason)
	}
	return fmt.Sprintf("%s (%d)", msg, e.Code)
}

// IsNotFound reports whether err is the API server's 404.
func IsNotFound(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

// IsGone reports whether err says that a resourceVersion or continue
// token is too old (410): the list must start again.
func IsGone(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && (se.Code == http.StatusGone || se.Reason == "Expired" || se.Reason == "Gone")
}
