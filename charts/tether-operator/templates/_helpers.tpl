{{/* The release's full name, cut to the 63 characters a label value allows. */}}
{{- define "tether-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tether-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tether-operator.labels" -}}
{{ include "tether-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tether-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tether-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The namespace whose GitRepository objects are watched in namespace scope. */}}
{{- define "tether-operator.watchNamespace" -}}
{{- default .Release.Namespace .Values.watchNamespace -}}
{{- end -}}

{{- define "tether-operator.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicas) 1) -}}true{{- end -}}
{{- end -}}

{{/* Fails early on values that cannot work. */}}
{{- define "tether-operator.validate" -}}
{{- if not (has .Values.scope (list "cluster" "namespace")) -}}
{{- fail (printf "scope must be cluster or namespace, not %q" .Values.scope) -}}
{{- end -}}
{{- if and .Values.hub.url (not .Values.hub.tokenSecret.name) -}}
{{- fail "hub.url needs hub.tokenSecret.name: the operator authenticates to the hub with that token" -}}
{{- end -}}
{{- end -}}

{{/*
The rules for applying and pruning the manifests of the repositories: rbac.applyRules, or everything.
*/}}
{{- define "tether-operator.applyRules" -}}
{{- if .Values.rbac.applyRules -}}
{{ toYaml .Values.rbac.applyRules }}
{{- else -}}
- apiGroups: ["*"]
  resources: ["*"]
  verbs: [get, list, watch, create, update, patch, delete]
{{- end -}}
{{- end -}}
