{{/* Object names: "<release>-<chart>" unless the release name already contains the chart name. */}}
{{- define "kubefusion.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubefusion.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kubefusion.operatorName" -}}
{{- printf "%s-operator" (include "kubefusion.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubefusion.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubefusion.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels. helm.sh/chart and app.kubernetes.io/managed-by are the only Helm-specific ones: manifests/
     carries the rest (tests/deploy compares them). */}}
{{- define "kubefusion.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubefusion.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kubefusion.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kubefusion.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kubefusion
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kubefusion.operatorSelectorLabels" -}}
{{ include "kubefusion.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kubefusion.operatorLabels" -}}
{{ include "kubefusion.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kubefusion.monitoringLabels" -}}
{{ include "kubefusion.labels" . }}
app.kubernetes.io/component: monitoring
{{- end }}

{{/* "repository:tag" or "repository@digest"; the tag defaults to the chart's appVersion. */}}
{{- define "kubefusion.operatorImage" -}}
{{- $image := .Values.operator.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "kubefusion.trainerImage" -}}
{{- printf "%s:%s" .Values.trainer.image.repository (default .Chart.AppVersion .Values.trainer.image.tag) }}
{{- end }}

{{/* Whether to create the Prometheus-operator objects (ServiceMonitor, PodMonitor, PrometheusRule):
     monitoring.enabled true, or "auto" and the cluster serves monitoring.coreos.com/v1 (`helm template` asks
     no cluster: it sees that API only with --api-versions monitoring.coreos.com/v1). Returns "true" or "". */}}
{{- define "kubefusion.monitoring" -}}
{{- $mode := toString .Values.monitoring.enabled }}
{{- if eq $mode "true" }}true
{{- else if and (eq $mode "auto") (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") }}true
{{- end }}
{{- end }}

{{/* Whether to install the ClusterTrainingRuntime the TrainJob backend runs on: trainJob.runtime.create true,
     or "auto" and the cluster serves trainer.kubeflow.org/v1alpha1 (Kubeflow Trainer v2; `helm template` sees it
     only with --api-versions trainer.kubeflow.org/v1alpha1). Returns "true" or "". */}}
{{- define "kubefusion.trainingRuntime" -}}
{{- $mode := toString .Values.trainJob.runtime.create }}
{{- if eq $mode "true" }}true
{{- else if and (eq $mode "auto") (.Capabilities.APIVersions.Has "trainer.kubeflow.org/v1alpha1") }}true
{{- end }}
{{- end }}
